"""The polars fast path of the JSONL and CSV readers gives, bit for bit, what the line-by-line way gives.

Every hostile shape polars is lenient about (a key first seen after the rows it infers from, a
number in a column of strings, a null, a repeated key, a nested object, an escaped colon, a short
CSV row) must either read the same or go the line-by-line way; generated streams check the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_server.curves import columnar
from mcp_server.curves.readers import CsvReader, JsonlReader
from mcp_server.curves.store import Curves

pytestmark = pytest.mark.skipif(not columnar.available(), reason="polars is a dependency; without it no fast path")


def _snapshot(reader) -> tuple:
    """Everything a reader leaves in Curves: names in order, every column's bytes, counts, events."""
    curves = Curves()
    reader.read_new(curves)
    columns = {
        name: tuple(getattr(s, c)().tobytes() for c in ("values", "steps", "epochs", "times"))
        for name, s in curves.series.items()
    }
    return (
        sorted(curves.series),
        columns,
        curves.records,
        curves.skipped,
        curves.events,
        curves.done_reason,
        curves.last_error,
    )


def _both(path: Path, reader_type=JsonlReader) -> tuple[tuple, tuple, list[bool]]:
    """(fast snapshot, slow snapshot, whether each block went the fast way)."""
    taken: list[bool] = []
    take = columnar.take_jsonl if reader_type is JsonlReader else columnar.take_csv
    name = take.__name__

    def spy(*args, **kwargs):
        taken.append(take(*args, **kwargs))
        return taken[-1]

    setattr(columnar, name, spy)
    try:
        reader = reader_type(path)
        reader.columnar_from = 0  # these files are small: columnar whatever their size
        fast = _snapshot(reader)
    finally:
        setattr(columnar, name, take)
    slow_reader = reader_type(path)
    slow_reader.fast = False
    return fast, _snapshot(slow_reader), taken


def _stream(n: int) -> list[dict]:
    out: list[dict] = [{"t": 0.0, "event": "start", "device": "cuda:0", "config": {"lr": 0.1}}]
    for i in range(1, n + 1):
        out.append({"t": 1.7e9 + i, "step": i, "epoch": i // 10, "split": "train", "loss": 1.0 / i, "lr": 0.1})
        if i % 25 == 0:
            out.append({"t": 1.7e9 + i, "step": i, "split": "val", "loss": 2.0 / i, "acc": i / n})
    out.append({"t": 1.7e9 + n, "event": "done", "reason": "completed"})
    return out


def _write(path: Path, records: list, extra_lines: list[str] = ()) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_our_metrics_stream_goes_the_fast_way_and_reads_the_same(tmp_path):
    fast, slow, taken = _both(_write(tmp_path / "m.jsonl", _stream(3000)))
    assert taken == [True]
    assert fast == slow
    assert fast[0] == ["train/loss", "train/lr", "val/acc", "val/loss"] and fast[2] == 3000 + 120
    assert fast[4] == {"start": 1, "done": 1} and fast[5] == "completed"


LATE = [
    (
        "a key first seen after the inferred rows",
        [{"step": i, "loss": 0.5} for i in range(1500)] + [{"step": 1500, "loss": 0.4, "late": 7.0}],
    ),
    ("a number where strings were", [{"step": i, "mode": "easy"} for i in range(1200)] + [{"step": 1200, "mode": 2}]),
    ("a string that reads as a number", [{"step": 1, "x": "2.5"}, {"step": 2, "x": "nan"}]),
    ("an explicit null", [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None, "acc": 0.3}]),
    ("a repeated key", ['{"step": 1, "loss": 0.5, "loss": 0.7}']),
    ("a nested object", [{"step": 1, "loss": 0.5, "cfg": {"lr": 0.1}}, {"step": 2, "loss": 0.4}]),
    ("an escaped colon", ['{"step": 1, "note": "a\\u003ab", "loss": 0.5}']),
    ("space before a colon", ['{"step" : 1, "loss": 0.5}', '{"step": 2, "loss" : 0.25}']),
    ("booleans and numbers", [{"step": 1, "ok": True, "loss": 1}, {"step": 2, "ok": 3, "loss": 0.5}]),
    ("integers then floats", [{"step": i, "loss": 1} for i in range(1100)] + [{"step": 1100, "loss": 0.5}]),
    (
        "non-finite strings",
        [
            {"step": 1, "split": "train", "loss": "nan"},
            {"step": 2, "split": "train", "loss": "+inf"},
            {"step": 3, "split": "train", "loss": "-Infinity"},
        ],
    ),
    ("a split that is a number", [{"step": 1, "split": 3, "loss": 0.5}, {"step": 2, "split": "val", "loss": 0.4}]),
    ("records without a split beside split ones", [{"step": 1, "loss": 0.5}, {"step": 2, "split": "val", "loss": 0.4}]),
    ("an empty split", [{"step": 1, "split": "", "loss": 0.5}, {"step": 2, "split": "val", "loss": 0.4}]),
    ("an event with a numeric name", [{"event": 5, "step": 1}, {"step": 1, "loss": 0.5}]),
    ("an error event", [{"step": 1, "loss": 0.5}, {"event": "error", "message": "RuntimeError: CUDA: out of memory"}]),
    ("a huge integer", [{"step": 1, "loss": 10**30}]),
    ("a time as text", [{"step": 1, "t": "2026-12-01T10:00:00", "loss": 0.5}]),
    ("a colon in a key", [{"step": 1, "a:b": 0.5}, {"step": 2, "a:b": 0.25}]),
]


@pytest.mark.parametrize("records", [r for _, r in LATE], ids=[name for name, _ in LATE])
def test_every_shape_polars_is_lenient_about_reads_as_the_line_by_line_way(tmp_path, records):
    fast, slow, _ = _both(_write(tmp_path / "m.jsonl", records, ["", "{broken", "[1, 2]"]))
    assert fast == slow
    fast, slow, _ = _both(_write(tmp_path / "clean.jsonl", records))
    assert fast == slow


def test_a_late_key_is_never_dropped(tmp_path, monkeypatch):
    """Inferred from the first rows, the frame lacks "late": its colon is unaccounted, so polars
    reads the block again inferring from every line; a reader that cannot, reads it line by line."""
    path = _write(tmp_path / "m.jsonl", LATE[0][1])
    fast, slow, taken = _both(path)
    assert taken == [True] and fast == slow and "late" in fast[0]
    curves = Curves()
    assert columnar.take_jsonl(path.read_bytes(), curves, frozenset({"step"}), ("step",), (), {})
    assert curves.series["late"].values().tolist() == [7.0]
    monkeypatch.setattr(columnar, "_parse_jsonl", lambda block, schema: None)
    assert _both(path)[2] == [False]


_value = st.one_of(
    st.floats(allow_nan=False, width=32),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.sampled_from(["nan", "inf", "-inf", "x", "1.5", "a:b"]),
    st.just({"k": 1}),
)
_record = st.dictionaries(
    st.sampled_from(["step", "epoch", "t", "split", "loss", "acc", "event", "val:x"]), _value, max_size=6
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, max_size=40), split=st.sampled_from([None, "train", "val"]))
def test_generated_streams_read_the_same_either_way(tmp_path, records, split):
    if split:
        records = [{**r, "split": split} if i % 2 else r for i, r in enumerate(records)]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fast, slow, _ = _both(path)
    assert fast == slow


def test_csv_plain_rows_go_the_fast_way_and_read_the_same(tmp_path):
    path = tmp_path / "m.csv"
    rows = [f"{i},{i // 4},{1.7e9 + i * 0.25!r},{1 / (i + 1)!r},{i * 1e-7:.8g}" for i in range(300)]
    rows[7] = "7,1,1700000001.75,nan,-inf"
    rows[40] = "40,10,1700000010.0,,4e-06"  # sparse, as Lightning writes
    path.write_text("step,epoch,time,loss,lr\n" + "\n".join(rows) + "\n")
    fast, slow, taken = _both(path, CsvReader)
    assert taken == [True] and fast == slow
    loss = CsvReader(path)
    curves = Curves()
    loss.read_new(curves)
    assert math.isnan(curves.series["loss"].values()[7]) and len(curves.series["loss"]) == 299


@pytest.mark.parametrize(
    "body",
    [
        "1,0.5,0.1\n2,0.4\n3,0.3,0.1\n",  # a short row: polars would pad it with a null
        "1,0.5,0.1\n\n2,0.4,0.1\n",  # a blank line
        "1,0.5,x\n2,0.4,0.1\n",  # a word
        "1,0.5,0.1,9\n2,0.4,0.1\n",  # a long row
        "1,1_000,0.1\n",  # float() reads it, polars does not
        "1, 0.5,0.1\n2,0.4 ,0.1\n",  # spaces around a number
    ],
)
def test_csv_rows_polars_would_misread_go_row_by_row(tmp_path, body):
    path = tmp_path / "m.csv"
    path.write_text("step,loss,lr\n" + body)
    fast, slow, _ = _both(path, CsvReader)
    assert fast == slow
