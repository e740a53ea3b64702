"""The curve readers on real files: our trainers run as subprocesses, recorded Lightning and HF logs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mcp_server.curves import readers
from mcp_server.curves.readers import (
    CsvReader,
    HfStateReader,
    HistoryReader,
    JsonlReader,
    StdoutReader,
    detect,
    discover,
    parse_line,
)
from mcp_server.curves.store import Curves

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "curves"
TINY_TRM = ["--num-train", "300", "--num-test", "60", "--dim", "16", "--depth", "1", "--device", "cpu", "--epochs", "3"]
TINY_PPO_CONFIG = "[env]\nmax_steps = 40\n[training]\ncheckpoint_every = 1\n"
TINY_PPO = ["-e", "8", "--eval-episodes", "4", "--device", "cpu", "-u", "3"]


def _run_trainer(folder: Path, script: str, *args: str) -> None:
    """Run a bundled trainer as trainguard would: metrics to folder/metrics.jsonl, stdout to stdout.log."""
    env = {**os.environ, "TRAINGUARD_METRICS": str(folder / "metrics.jsonl")}
    env.pop("TRAINGUARD_RUN_DIR", None)
    with open(folder / "stdout.log", "wb") as out, open(folder / "stderr.log", "wb") as err:
        proc = subprocess.run(
            [sys.executable, str(REPO / "trainers" / script), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            timeout=240,
            check=False,
        )
    assert proc.returncode == 0, (folder / "stderr.log").read_text()


@pytest.fixture(scope="module")
def trm_run(tmp_path_factory) -> Path:
    """A 3-epoch TRM run folder: metrics.jsonl, stdout.log, checkpoints/history.json."""
    folder = tmp_path_factory.mktemp("trm_run")
    _run_trainer(folder, "trm_nav.py", *TINY_TRM, "--checkpoint-dir", str(folder / "checkpoints"))
    return folder


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    """A 3-update PPO run: metrics.jsonl, and under out/ the update and episode CSVs and event file."""
    folder = tmp_path_factory.mktemp("ppo_run")
    (folder / "tiny.toml").write_text(TINY_PPO_CONFIG)
    _run_trainer(
        folder,
        "ppo_gridworld.py",
        *TINY_PPO,
        "--config",
        str(folder / "tiny.toml"),
        "--output-dir",
        str(folder / "out"),
    )
    return folder


def _records(path: Path) -> list[dict]:
    """The JSON objects of a metrics stream, parsed line by line: the source of truth."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _read(reader, curves: Curves | None = None) -> Curves:
    curves = curves if curves is not None else Curves()
    reader.read_new(curves)
    return curves


def _values(curves: Curves, name: str) -> list[float]:
    return curves.series[name].values().tolist()


def _same(a: list[float], b: list[float]) -> bool:
    """Equal lists of floats, NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# Each reader on what our trainers really write


def test_jsonl_reads_every_value_of_a_trm_run(trm_run):
    path = trm_run / "metrics.jsonl"
    curves = _read(JsonlReader(path))
    records = _records(path)
    logged = [r for r in records if "event" not in r]
    for split in ("train", "val"):
        rows = [r for r in logged if r["split"] == split]
        for key in set(rows[0]) - {"t", "step", "epoch", "split"}:
            series = curves.series[f"{split}/{key}"]
            assert _values(curves, f"{split}/{key}") == [r[key] for r in rows]
            assert series.steps().tolist() == [r["step"] for r in rows]
            assert series.epochs().tolist() == [r["epoch"] for r in rows]
            assert series.times().tolist() == [r["t"] for r in rows]
    assert curves.records == len(logged)
    assert curves.skipped == 0
    assert curves.events == Counter(r["event"] for r in records if "event" in r)
    assert curves.events["start"] == curves.events["done"] == 1 and curves.events["checkpoint"] >= 3
    assert curves.done_reason == "completed"
    assert curves.sources == [f"jsonl: {path}"]


def test_history_json_equals_the_jsonl_of_the_same_run(trm_run):
    history = _read(HistoryReader(trm_run / "checkpoints" / "history.json"))
    stream = _read(JsonlReader(trm_run / "metrics.jsonl"))
    pairs = {
        "train_loss": "train/loss",
        "train_acc": "train/acc",
        "val_loss": "val/loss",
        "val_acc": "val/acc",
        "lr": "train/lr",
    }
    assert set(history.series) == set(pairs)
    for name, streamed in pairs.items():
        assert _values(history, name) == _values(stream, streamed)
        assert history.series[name].steps().tolist() == [1.0, 2.0, 3.0]
        assert history.series[name].epochs().tolist() == stream.series[streamed].epochs().tolist()
    assert history.records == 3


def test_stdout_epoch_lines_give_the_printed_values(trm_run):
    printed = _read(StdoutReader(trm_run / "stdout.log"))
    stream = _read(JsonlReader(trm_run / "metrics.jsonl"))
    pairs = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc"}
    assert set(printed.series) == set(pairs)  # "Best val acc ... at epoch 2" and the Data/Model lines: no series
    for name, streamed in pairs.items():
        assert _values(printed, name) == pytest.approx(_values(stream, streamed), abs=0.51e-4)  # printed :.4f
        assert printed.series[name].epochs().tolist() == [1.0, 2.0, 3.0]
        assert printed.series[name].steps().tolist() == [1.0, 2.0, 3.0]
    assert printed.records == 3 and printed.skipped == 0


def test_ppo_update_csv_equals_its_jsonl(ppo_run):
    (path,) = (ppo_run / "out" / "logs").glob("*_updates.csv")
    table = _read(CsvReader(path))
    stream = _read(JsonlReader(ppo_run / "metrics.jsonl"))
    rows = [r for r in _records(ppo_run / "metrics.jsonl") if r.get("split") == "ground_truth"]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "entropy_coef", "clip_eps", "sps"):
        assert _values(table, key) == _values(stream, f"ground_truth/{key}")
        assert table.series[key].steps().tolist() == [1.0, 2.0, 3.0]  # the "update" column
    assert _values(table, "mean_return") == _values(stream, "ground_truth/return")
    assert _values(table, "env_steps") == [float(r["step"]) for r in rows]
    assert "update" not in table.series
    assert table.records == 3 and table.skipped == 0
    assert stream.events["checkpoint"] == 3 and stream.done_reason == "completed"
    assert _values(stream, "eval/return")  # the evaluation record


def test_ppo_episode_csv_one_point_per_finished_episode(ppo_run):
    (path,) = (ppo_run / "out" / "logs").glob("*_episodes.csv")
    lines = path.read_text().splitlines()
    curves = _read(CsvReader(path))
    assert set(curves.series) == {"return", "length", "food", "poison", "died"}  # not the text column "mode"
    assert len(curves.series["return"]) == len(lines) - 1 == curves.records
    first = lines[1].split(",")
    assert curves.series["return"].values()[0] == float(first[2])
    assert curves.series["return"].steps()[0] == float(first[1])  # the update that finished it


# ---------------------------------------------------------------------------------------------
# Recorded third-party files


def test_lightning_metrics_csv_sparse_rows_are_not_zeros():
    curves = _read(CsvReader(FIXTURES / "lightning_metrics.csv"))
    assert set(curves.series) == {"train_loss", "val_loss", "val_acc"}
    train, val = curves.series["train_loss"], curves.series["val_acc"]
    assert len(train) == 18 and len(val) == 3 and len(curves.series["val_loss"]) == 3
    assert train.steps().tolist() == list(range(18))
    assert val.steps().tolist() == [5.0, 11.0, 17.0] and val.epochs().tolist() == [0.0, 1.0, 2.0]
    assert val.values().tolist() == [0.59375, 0.671875, 0.734375]
    assert (train.values() > 0).all()
    assert curves.records == 21 and curves.skipped == 0


def test_hf_trainer_state_every_numeric_key_with_step_and_epoch():
    path = FIXTURES / "trainer_state.json"
    state = json.loads(path.read_text())
    reader = HfStateReader(path)
    curves = _read(reader)
    train = [e for e in state["log_history"] if "loss" in e]
    assert _values(curves, "loss") == [e["loss"] for e in train]
    assert curves.series["loss"].steps().tolist() == [e["step"] for e in train] == list(range(1, 17))
    assert curves.series["loss"].epochs().tolist() == [e["epoch"] for e in train]
    assert curves.series["eval_accuracy"].steps().tolist() == [8.0, 16.0]
    assert _values(curves, "eval_loss") == [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert {"learning_rate", "grad_norm", "eval_runtime"} <= set(curves.series)
    assert "step" not in curves.series and "epoch" not in curves.series
    assert curves.records == len(state["log_history"]) == 18
    assert reader.read_new(curves) == 0 and len(curves.series["loss"]) == 16  # unchanged: not read again


# ---------------------------------------------------------------------------------------------
# Incremental reading


def _append(path: Path, data: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(data)


@pytest.mark.parametrize(
    ("make", "name", "head", "line", "series"),
    [
        (
            JsonlReader,
            "m.jsonl",
            '{"step": 1, "split": "train", "loss": 0.5}\n',
            '{"step": 2, "split": "train", "loss": 0.25}\n',
            "train/loss",
        ),
        (CsvReader, "m.csv", "step,loss\n1,0.5\n", "2,0.25\n", "loss"),
        (
            StdoutReader,
            "stdout.log",
            "Epoch 1/3 - Train Loss: 0.5000\n",
            "Epoch 2/3 - Train Loss: 0.2500 *\n",
            "train_loss",
        ),
    ],
)
def test_a_torn_last_line_waits_and_then_counts_once(tmp_path, make, name, head, line, series):
    path = tmp_path / name
    path.write_text(head)
    reader, curves = make(path), Curves()
    assert reader.read_new(curves) == len(head.encode())
    half = len(line) // 2
    _append(path, line[:half])
    assert reader.read_new(curves) == 0  # no newline yet
    assert _values(curves, series) == [0.5]
    _append(path, line[half:])
    assert reader.read_new(curves) == len(line.encode())
    assert reader.read_new(curves) == 0
    assert _values(curves, series) == [0.5, 0.25]
    assert curves.series[series].steps().tolist() == [1.0, 2.0]
    assert curves.skipped == 0


def test_a_shrunk_file_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "split": "train", "loss": {i}}}\n' for i in range(5)))
    reader = JsonlReader(path)
    _read(reader)
    path.write_text('{"step": 7, "split": "train", "loss": 7}\n')
    curves = _read(reader)  # the caller resets Curves on a new file
    assert _values(curves, "train/loss") == [7.0]
    assert reader.rewinds == 1


def test_a_file_replaced_by_a_longer_one_is_read_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n')
    reader = JsonlReader(path)
    _read(reader)
    new = tmp_path / "new.jsonl"
    new.write_text('{"step": 1, "loss": 10}\n{"step": 2, "loss": 20}\n')
    new.replace(path)  # another inode
    curves = Curves()
    assert reader.read_new(curves) == path.stat().st_size  # all of the new file
    assert _values(curves, "loss") == [10.0, 20.0]
    assert reader.rewinds == 1


def test_csv_rewritten_with_a_new_header_is_read_again(tmp_path):
    """Lightning's CSVLogger rewrites metrics.csv in place when a metric appears for the first time."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss\n0,0,0.9\n0,1,0.8\n")
    reader = CsvReader(path)
    assert _values(_read(reader), "train_loss") == [0.9, 0.8]
    with open(path, "r+", encoding="utf-8") as fh:  # the same inode, longer, another first line
        fh.write("epoch,step,train_loss,val_loss\n0,0,0.9,\n0,1,0.8,\n0,1,,0.7\n")
    curves = _read(reader)
    assert _values(curves, "train_loss") == [0.9, 0.8] and _values(curves, "val_loss") == [0.7]
    assert reader.rewinds == 1 and curves.skipped == 0


def test_csv_rows_the_csv_module_refuses_are_skipped(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,loss,note\n1,0.5,ok\n2,0.4," + "x" * 200_000 + "\n3,0.3,ok\n4,0.2\n\n")
    curves = _read(CsvReader(path))
    assert _values(curves, "loss") == [0.5, 0.3]  # the over-long field and the short row are skipped
    assert curves.skipped == 2 and curves.records == 2


def _csv_snapshot(path: Path, fast: bool, monkeypatch=None, chunk: int | None = None) -> tuple:
    """Everything a CsvReader leaves in Curves, bit for bit (NaN == NaN, -0.0 != 0.0)."""
    if chunk is not None:
        monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)
    reader = CsvReader(path)
    reader.fast = fast
    curves = _read(reader)
    columns = {
        name: tuple(getattr(s, c)().tobytes() for c in ("values", "steps", "epochs", "times"))
        for name, s in curves.series.items()
    }
    return list(curves.series), columns, curves.records, curves.skipped


def test_csv_fast_path_gives_the_same_series_as_row_by_row(tmp_path, monkeypatch):
    """Plain numeric rows go through numpy a chunk at a time; the csv module row by row must agree."""
    path = tmp_path / "m.csv"
    rows = [f"{i},{i // 4},{1.7e9 + i * 0.25!r},{1 / (i + 1)!r},{i * 1e-7:.8g}" for i in range(200)]
    rows[7] = "7,1,1700000001.75,nan,7e-07"  # orjson refuses nan: float() per cell
    rows[9] = "9,2,1700000002.25,-0,inf"  # -0 is -0.0, as float() says
    rows[40] = "40,10,1700000010.0,,4e-06"  # an empty cell: that chunk row by row
    rows[41] = "41,10,1700000010.25,0.5,x"  # a word: no value, the row still counts
    rows[60] = "60,15,1700000015.0,0.1"  # a short row: skipped
    path.write_text("step,epoch,time,loss,lr\n" + "\n".join(rows) + "\n61,15")  # a torn last line
    slow = _csv_snapshot(path, fast=False)
    assert slow[0] == ["loss", "lr"] and slow[2:] == (199, 1)
    assert _csv_snapshot(path, fast=True) == slow
    assert _csv_snapshot(path, fast=True, monkeypatch=monkeypatch, chunk=64) == slow  # some chunks fast, some not
    curves = _read(CsvReader(path))
    loss, lr = curves.series["loss"].values(), curves.series["lr"].values()
    assert math.isnan(loss[7]) and math.copysign(1, loss[9]) == -1 and lr[9] == math.inf
    assert len(loss) == 198 and len(lr) == 198  # rows 40 and 41 lack one value each, row 60 is skipped
    assert curves.series["loss"].steps()[:3].tolist() == [0.0, 1.0, 2.0]


def test_csv_fast_path_takes_the_plain_rows_and_reads_in_increments(tmp_path, monkeypatch):
    calls = []
    table = readers._csv_table
    monkeypatch.setattr(readers, "_csv_table", lambda chunk, ncols: calls.append(t := table(chunk, ncols)) or t)
    path = tmp_path / "m.csv"
    path.write_text("\ufeffstep,loss,loss,acc\n1,0.5,0.4,0.9\n2,0.25,0.2,0.95\n")  # a BOM; "loss" twice: the last
    reader, curves = CsvReader(path), Curves()
    reader.read_new(curves)
    assert calls and calls[-1] is not None  # the rows after the header went the fast way
    _append(path, "3,nan,0.1,inf\n4,")
    reader.read_new(curves)
    assert calls[-1] is not None and calls[-1].shape == (1, 4)  # float() per cell, the torn row waits
    _append(path, "0.1,,0.99\n")  # sparse, as Lightning writes: row by row
    reader.read_new(curves)
    assert calls[-1] is None
    assert _values(curves, "loss") == [0.4, 0.2, 0.1] and _values(curves, "acc")[:2] == [0.9, 0.95]
    assert math.isinf(_values(curves, "acc")[2]) and _values(curves, "acc")[3] == 0.99
    assert curves.series["acc"].steps().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert curves.records == 4 and curves.skipped == 0


def test_csv_sparse_lightning_rows_read_the_same_either_way():
    path = FIXTURES / "lightning_metrics.csv"
    assert _csv_snapshot(path, fast=True) == _csv_snapshot(path, fast=False)


def test_whole_file_readers_replace_their_series_and_wait_for_valid_json(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"train_loss": [1.0, 0.5], "lr": [0.1, 0.1]}))
    reader, curves = HistoryReader(path), Curves()
    reader.read_new(curves)
    path.write_text('{"train_loss": [1.0, 0.5, 0.2')  # being rewritten
    assert reader.read_new(curves) == 0
    assert _values(curves, "train_loss") == [1.0, 0.5]
    path.write_text(json.dumps({"train_loss": [1.0, 0.5, 0.25], "lr": [0.1, 0.1, "nan"]}))
    assert reader.read_new(curves) == path.stat().st_size
    assert _values(curves, "train_loss") == [1.0, 0.5, 0.25]
    assert _same(_values(curves, "lr"), [0.1, 0.1, math.nan])
    assert curves.series["train_loss"].steps().tolist() == [1.0, 2.0, 3.0]
    assert curves.records == 3 and curves.skipped == 0


# ---------------------------------------------------------------------------------------------
# What a bad or unusual file holds


def test_malformed_lines_are_counted_and_the_rest_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "train", "loss": 1.0}\n'
        '{"step": 2, "split": "tra\n'  # torn by a crash, then the writer went on
        "[1, 2]\n"  # JSON, not an object
        "3\n"
        "\n"  # a blank line: ignored
        '{"step": 3, "split": "train", "loss": 0.5}\n'
        "not json at all\n"
    )
    curves = _read(JsonlReader(path))
    assert _values(curves, "train/loss") == [1.0, 0.5]
    assert curves.skipped == 4 and curves.records == 2


def test_nonfinite_values_are_kept_and_booleans_are_not_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    values = ["nan", "inf", "-inf", "NaN", "Infinity", 1.5]
    path.write_text(
        "".join(
            json.dumps({"t": 1.0, "step": i, "split": "train", "loss": v, "flag": True, "note": "x"}) + "\n"
            for i, v in enumerate(values)
        )
        + '{"step": 9, "split": "train", "loss": NaN}\n'
    )  # Python's json.dumps default
    curves = _read(JsonlReader(path))
    assert _same(_values(curves, "train/loss"), [math.nan, math.inf, -math.inf, math.nan, math.inf, 1.5, math.nan])
    assert set(curves.series) == {"train/loss"}
    assert curves.skipped == 0 and curves.records == 7


def test_generic_jsonl_of_another_tool(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"global_step": 10, "epoch": 0.5, "loss": 2.0, "accuracy": 0.25, "run": "a", "cfg": {"lr": 1}}\n'
        '{"global_step": 20, "epoch": 1.0, "loss": 1.0, "timestamp": 100.5}\n'
        '{"event": "checkpoint", "name": "ckpt-20", "self": 1, "path": "x"}\n'
    )
    curves = _read(JsonlReader(path))
    assert set(curves.series) == {"loss", "accuracy"}
    loss = curves.series["loss"]
    assert loss.steps().tolist() == [10.0, 20.0] and loss.epochs().tolist() == [0.5, 1.0]
    assert _same(loss.times().tolist(), [math.nan, 100.5])
    assert curves.events == {"checkpoint": 1}


def _mixed_stream(path: Path, n: int) -> list[dict]:
    """n train records, a val record every 7, a NaN, a bad line and events (a long first line)."""
    records: list[dict] = [{"t": 0.0, "event": "start", "config": {"lr": 0.1}, "note": "x" * 1500}]  # > 1 read
    for i in range(1, n + 1):
        records.append(
            {
                "t": float(i),
                "step": i,
                "epoch": i // 50,
                "split": "train",
                "loss": "nan" if i == n // 2 else 1.0 / i,
                "lr": 0.1,
            }
        )
        if i % 7 == 0:
            records.append({"t": float(i), "step": i, "epoch": i // 50, "split": "val", "acc": i / n})
    records.append({"t": float(n), "event": "done", "reason": "completed"})
    lines = [json.dumps(r) for r in records]
    lines.insert(n // 3, "{broken")
    path.write_text("\n".join(lines) + "\n")
    return records


def _expect(records: list[dict], split: str, key: str) -> list[float]:
    return [math.nan if r[key] == "nan" else float(r[key]) for r in records if r.get("split") == split and key in r]


LOADERS = [json.loads]
try:
    import orjson

    LOADERS.append(orjson.loads)
except ImportError:
    pass


@pytest.mark.parametrize("loads", LOADERS, ids=lambda f: f.__module__)
def test_chunked_reading_keeps_order_and_counts(tmp_path, monkeypatch, loads):
    """Small chunks and reads: a bad line costs its chunk one line-by-line pass, nothing else."""
    monkeypatch.setattr(readers, "_LOADS", loads)
    monkeypatch.setattr(readers, "CHUNK_BYTES", 500)
    monkeypatch.setattr(readers, "READ_BYTES", 333)
    path = tmp_path / "metrics.jsonl"
    records = _mixed_stream(path, 600)
    curves = _read(JsonlReader(path))
    assert _same(_values(curves, "train/loss"), _expect(records, "train", "loss"))
    assert _values(curves, "val/acc") == _expect(records, "val", "acc")
    assert curves.series["val/acc"].steps().tolist() == [float(i) for i in range(7, 601, 7)]
    assert curves.skipped == 1 and curves.records == 600 + 600 // 7
    assert curves.events == {"start": 1, "done": 1}


def test_reading_in_many_small_appends_equals_reading_once(tmp_path):
    source = tmp_path / "all.jsonl"
    records = _mixed_stream(source, 300)
    data = source.read_bytes()
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    reader, curves = JsonlReader(path), Curves()
    consumed = 0
    for start in range(0, len(data), 997):  # cuts fall inside lines
        with open(path, "ab") as fh:
            fh.write(data[start : start + 997])
        consumed += reader.read_new(curves)
    assert consumed == len(data)
    assert _same(_values(curves, "train/loss"), _expect(records, "train", "loss"))
    assert curves.skipped == 1 and curves.events == {"start": 1, "done": 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Epoch 2/100 - Train Loss: 1.2345, Train Acc: 0.5678 Val Loss: 1.1234, Val Acc: 0.5890 *",
            (2.0, 2.0, [("train_loss", 1.2345), ("train_acc", 0.5678), ("val_loss", 1.1234), ("val_acc", 0.589)]),
        ),
        (
            "Epoch 3/10 - Train Loss: 0.01234, Val Loss: 0.01500, Val PSNR: 24.31 dB, lr 1.00e-03, grad norm 0.512",
            (3.0, 3.0, [("train_loss", 0.01234), ("val_loss", 0.015), ("val_psnr", 24.31)]),
        ),
        ("Epoch 0 (initial model) - Val PSNR: 11.20 dB", (0.0, 0.0, [("val_psnr", 11.2)])),
        (
            "Epoch 4/9 - Train Loss: 0.10000 (recon 0.09000, occ 0.00500, phase 0.00500), Train PSNR: 20.00 dB, "
            "Val PSNR: 19.50 dB, skipped 2 non-finite steps *",
            (4.0, 4.0, [("train_loss", 0.1), ("train_psnr", 20.0), ("val_psnr", 19.5)]),
        ),
        ("step 1200 loss=0.25 lr=1e-4 acc=93.5%", (1200.0, None, [("loss", 0.25), ("lr", 1e-4), ("acc", 93.5)])),
        (
            "Epoch 1: 40%|####  | 4/10 [00:01<00:02, 3.1it/s, loss=0.7]\rEpoch 1: 100%|#####| 10/10 "
            "[00:03<00:00, 3.2it/s, loss=0.5, v_num=0]",
            (1.0, 1.0, [("loss", 0.5)]),
        ),
        ("it 5 | Loss: nan | grad: inf", (5.0, None, [("loss", math.nan), ("grad", math.inf)])),
        ("Best val acc 0.1667 at epoch 2", None),
        ("Early stopping: no better val acc for 3 epochs", None),
        ("loss: 0.5 (no position)", None),
        ("Epoch 3/10 ETA: 00:12 elapsed", None),
    ],
)
def test_printed_lines(line, expected):
    parsed = parse_line(line)
    if expected is None:
        assert parsed is None
        return
    assert parsed is not None
    step, epoch, pairs = parsed
    assert (step, epoch) == expected[:2]
    assert [name for name, _ in pairs] == [name for name, _ in expected[2]]
    assert _same([v for _, v in pairs], [v for _, v in expected[2]])


def test_stdout_progress_bar_noise_makes_no_series(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_text(
        "  3%|#   | 3/100 [00:00<00:10, 9.1it/s]\r  5%|#   | 5/100 [00:00<00:10, 9.3it/s]\n"
        "Downloading: 100%|####| 1.2M/1.2M\n"
        "Epoch 1/2 - Train Loss: 0.5000\n"
    )
    curves = _read(StdoutReader(path))
    assert set(curves.series) == {"train_loss"} and curves.skipped == 0 and curves.records == 1


# ---------------------------------------------------------------------------------------------
# Detection and discovery


def test_detect_by_name_and_by_content(tmp_path, trm_run, ppo_run):
    assert detect(trm_run / "metrics.jsonl").kind == "jsonl"
    assert detect(trm_run / "checkpoints" / "history.json").kind == "history"
    assert detect(trm_run / "stdout.log").kind == "stdout"
    assert detect(FIXTURES / "lightning_metrics.csv").kind == "csv"
    assert detect(FIXTURES / "trainer_state.json").kind == "hf_state"
    (events,) = (ppo_run / "out" / "runs").glob("*/events.out.tfevents.*")
    assert detect(events).kind == "tfevents"
    renamed = {
        "stream": (trm_run / "metrics.jsonl", "jsonl"),
        "table": (FIXTURES / "lightning_metrics.csv", "csv"),
        "state": (FIXTURES / "trainer_state.json", "hf_state"),
        "hist": (trm_run / "checkpoints" / "history.json", "history"),
        "printed": (trm_run / "stdout.log", "stdout"),
        "tb": (events, "tfevents"),
    }
    for name, (source, kind) in renamed.items():
        (tmp_path / name).write_bytes(source.read_bytes())
        assert detect(tmp_path / name).kind == kind, name
    (tmp_path / "compact").write_text(json.dumps({"train_loss": [1.0], "val_acc": [0.5]}))  # one line
    assert detect(tmp_path / "compact").kind == "history"
    (tmp_path / "blob").write_bytes(bytes(range(256)))
    (tmp_path / "notes").write_text("nothing here\n")
    assert detect(tmp_path / "blob") is None and detect(tmp_path / "notes") is None
    assert detect(tmp_path / "missing") is None


def test_discover_a_trm_run_folder(trm_run):
    found = discover(trm_run)
    assert [(r.kind, r.path) for r in found] == [
        ("jsonl", trm_run / "metrics.jsonl"),
        ("history", trm_run / "checkpoints" / "history.json"),
        ("stdout", trm_run / "stdout.log"),
    ]
    assert [(r.kind, r.path) for r in discover(trm_run / "stdout.log")] == [("stdout", trm_run / "stdout.log")]


def test_discover_a_ppo_output_folder(ppo_run):
    found = discover(ppo_run)
    assert [r.kind for r in found] == ["jsonl", "tfevents", "csv", "csv", "stdout"]
    assert [r.path.name.rsplit("_", 1)[-1] for r in found if r.kind == "csv"] == ["episodes.csv", "updates.csv"]
    stream, events = _read(found[0]), _read(found[1])
    name = "ground_truth/policy_loss"  # the event file's tag is the JSONL's series name
    assert events.series[name].values() == pytest.approx(stream.series[name].values(), rel=1e-6)  # float32
    assert events.series[name].steps().tolist() == stream.series[name].steps().tolist()
    assert [r.kind for r in discover(ppo_run / "out")] == ["tfevents", "csv", "csv"]


def test_discover_is_bounded_and_picks_the_newest_trainer_state(tmp_path):
    state = (FIXTURES / "trainer_state.json").read_text()
    for step in (8, 16):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    os.utime(tmp_path / "out" / "checkpoint-8" / "trainer_state.json", (1, 1))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "metrics.jsonl").write_text("{}\n")
    deep = tmp_path.joinpath("a", "b", "c", "d", "e")
    deep.mkdir(parents=True)
    (deep / "metrics.jsonl").write_text("{}\n")  # 5 folders down
    (deep.parent / "metrics.jsonl").write_text("{}\n")  # 4 folders down: found
    (tmp_path / "linked.csv").symlink_to(FIXTURES / "lightning_metrics.csv")
    (tmp_path / "linkdir").symlink_to(FIXTURES)
    found = discover(tmp_path)
    assert [(r.kind, r.path) for r in found] == [
        ("jsonl", deep.parent / "metrics.jsonl"),
        ("hf_state", tmp_path / "out" / "checkpoint-16" / "trainer_state.json"),
    ]


def test_discover_considers_at_most_max_files(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FILES", 5)
    for i in range(10):
        (tmp_path / f"f{i}.txt").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "metrics.jsonl").write_text("{}\n")
    assert discover(tmp_path) == []


def test_series_columns_are_numpy_ready(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": i * 0.5}) + "\n" for i in range(1000)))
    series = _read(JsonlReader(path)).series["loss"]
    assert np.array_equal(series.values(), np.arange(1000) * 0.5)
    assert np.isnan(series.epochs()).all() and np.isnan(series.times()).all()


def test_a_folder_s_log_listing_is_kept_until_a_file_appears_or_goes(tmp_path, monkeypatch):
    from mcp_server import safefiles

    walks = []
    real = safefiles.walk
    monkeypatch.setattr(safefiles, "walk", lambda *a, **k: walks.append(a[0]) or real(*a, **k))
    (tmp_path / "logs").mkdir()
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "logs" / "train.out").write_text("")

    def settle():  # folders last changed a minute ago: past SETTLED_NS, so a listing of them is kept
        for folder in (tmp_path, tmp_path / "logs"):
            os.utime(folder, ns=(time.time_ns() - 60 * 10**9,) * 2)

    def listed():
        found, guessed = readers.log_files(tmp_path)
        return sorted(str(p.relative_to(tmp_path)) for p in found + guessed)

    assert listed() == ["logs/train.out", "metrics.jsonl"]  # changed just now: not kept
    settle()
    assert listed() == ["logs/train.out", "metrics.jsonl"]
    walks.clear()
    assert listed() == ["logs/train.out", "metrics.jsonl"] and walks == []  # kept: two stat calls, no walk
    (tmp_path / "logs" / "val.log").write_text("")  # a folder below changes
    assert listed() == ["logs/train.out", "logs/val.log", "metrics.jsonl"] and walks == [tmp_path]
    settle()
    listed()
    (tmp_path / "metrics.jsonl").unlink()
    assert listed() == ["logs/train.out", "logs/val.log"]
    settle()
    listed()
    shutil.rmtree(tmp_path / "logs")
    assert listed() == []
