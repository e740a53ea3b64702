"""The fast path of the JSONL and CSV readers: a block of complete lines parsed by polars.

`polars.read_ndjson` and `polars.read_csv` parse a block in Rust into typed columns (several times
the speed of `orjson` building a dict per line); the columns become the same series, steps and
counts as the readers' line-by-line way. Where polars is more lenient than that way, the block is
checked before anything is added, and a block that fails a check, or that polars refuses (a line
that is not a JSON object, a key whose type changes, a word in a number column), is read the other
way. So whatever this path adds means what the line-by-line way would have added.

The checks, on the raw bytes and the parsed frame:

- JSON: polars infers the columns from the first lines (`INFER_ROWS`), so a key that first
  appears later would be dropped silently. Every ':' of the block must be accounted for: one per non-null
  value of a column (plus the colons in its name), plus those inside string values. A key polars
  did not keep, a repeated key, an explicit null or a nested object leaves colons unaccounted.
- JSON: polars turns a value into text where a column mixes types ("2" for 2, '{"k": 1}' for an
  object); every '"' must be accounted for too (two per key and per string value, plus those
  inside), which a number, boolean or object made text is not; and a string that reads as a
  finite number sends the block the other way.
- CSV: a short row comes back padded with nulls; every line must hold exactly the header's
  number of separators.

polars is imported on the first block (about 0.3 s), never at server start; without it every
block goes the other way.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType
from typing import Any

import numpy as np

from mcp_server.curves.names import NONFINITE
from mcp_server.curves.store import Curves

INFER_ROWS = (10_000, 200_000, None)  # lines polars infers the columns from, until every key is kept (None: all)
_NONFINITE_WORDS = list(NONFINITE)


class _Refused(Exception):
    """This block goes the line-by-line way."""


@functools.cache
def _polars() -> ModuleType | None:
    try:
        import polars
    except ImportError:
        return None
    return polars


def available() -> bool:
    return _polars() is not None


def _floats(column: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A column's values as float64 and the mask of those that are numbers; None if none is.

    Integers and floats are numbers (null: not present); strings only when they are one of the
    non-finite spellings ("nan", "inf", ...); booleans, lists, objects never.
    """
    pl = _polars()
    assert pl is not None
    dtype = column.dtype
    if dtype.is_numeric():
        values = column.cast(pl.Float64).to_numpy()
        if column.null_count() == 0:
            return values, np.ones(values.size, dtype=bool)
        return values, column.is_not_null().to_numpy()  # a null is NaN in `values`, absent in the mask
    if dtype == pl.String:
        words = column.is_in(_NONFINITE_WORDS).fill_null(False)
        if (column.cast(pl.Float64, strict=False).is_not_null() & ~words).any():
            raise _Refused  # "2": a string, or the number 2 in a column where strings mix with numbers
        if not words.any():
            return None
        values = column.replace_strict(NONFINITE, default=math.nan, return_dtype=pl.Float64).to_numpy()
        return values, words.to_numpy()
    return None


def _all_keys_kept(frame: Any, block: bytes) -> bool:
    """Whether every ':' and every '"' of `block` belongs to a key or a value polars kept as the
    line-by-line way would (see the module docstring)."""
    pl = _polars()
    assert pl is not None
    colons = quotes = escaped = 0
    for column in frame.get_columns():
        kept = len(column) - column.null_count()
        if not kept:
            continue
        if column.dtype.is_nested():
            return False
        in_name = column.name.count(":"), column.name.count('"')
        colons, quotes = colons + kept * (1 + in_name[0]), quotes + kept * (2 + in_name[1])
        escaped += sum(in_name)
        if column.dtype == pl.String:  # by distinct value: a split column holds a handful
            counts = column.drop_nulls().rename("value").value_counts(name="times")
            words, times = counts.get_column("value").to_list(), counts.get_column("times").to_list()
            in_colons = sum(w.count(":") * n for w, n in zip(words, times, strict=True))
            in_quotes = sum(w.count('"') * n for w, n in zip(words, times, strict=True))
            colons, quotes, escaped = colons + in_colons, quotes + 2 * kept + in_quotes, escaped + in_colons + in_quotes
    if escaped and b"\\u00" in block:  # an escaped ':' or '"' in a string: decoded, not in the raw counts
        return False
    return block.count(b":") == colons and block.count(b'"') == quotes


def _position(frame: Any, names: tuple[str, ...]) -> np.ndarray | None:
    """The first of `names` among the frame's columns as floats (NaN where absent or not a number)."""
    for name in names:
        if name in frame.columns:
            floats = _floats(frame.get_column(name))
            if floats is None:
                return None
            values, present = floats
            return values if present.all() else np.where(present, values, math.nan)
    return None


def _add(
    groups: list[tuple[str | None, Any]],
    curves: Curves,
    reserved: frozenset[str],
    positions: tuple[tuple[str, ...], ...],
) -> None:
    """Append each value column of each (prefix, frame) to its series; refuse before adding anything."""
    planned = []
    for prefix, frame in groups:
        columns = [
            (name, floats)
            for name in frame.columns
            if name and name not in reserved
            if (floats := _floats(frame.get_column(name))) is not None
        ]
        planned.append((prefix, [_position(frame, names) for names in positions], columns))
    for prefix, (steps, epochs, times), columns in planned:
        carried = None
        for name, (values, present) in columns:
            if not present.any():
                continue
            carried = present if carried is None else carried | present
            keep = None if present.all() else present
            series = curves.get(f"{prefix}/{name}" if prefix else name)
            series.extend(*(c if c is None or keep is None else c[keep] for c in (values, steps, epochs, times)))
        if carried is not None:
            curves.records += int(np.count_nonzero(carried))


def _split_events(block: bytes) -> tuple[bytes, list[dict[str, Any]]] | None:
    """The block without its event lines, and those events parsed; None when a line holding the
    word "event" is not an event record (its values would be added out of order)."""
    import orjson

    kept, events, start = [], [], 0
    at = block.find(b'"event"')
    while at != -1:
        line_start = block.rfind(b"\n", 0, at) + 1
        line_end = block.find(b"\n", at) + 1 or len(block)
        try:
            record = orjson.loads(block[line_start:line_end])
        except ValueError:
            return None
        if not isinstance(record, dict) or "event" not in record:
            return None
        events.append(record)
        kept.append(block[start:line_start])
        start = line_end
        at = block.find(b'"event"', line_end)
    kept.append(block[start:])
    return b"".join(kept), events


def _parse_jsonl(block: bytes, schema: dict[str, Any]) -> Any | None:
    """The block as a frame whose columns hold every key of it, or None.

    With the columns of the blocks before (`schema`, updated here) polars infers nothing; when a
    key is new, or without them, it infers from the first 10,000 lines, then from more (each try
    costs about its share of the block: a validation record every few thousand steps is found by
    the first).
    """
    pl = _polars()
    assert pl is not None
    tries = [{"schema": dict(schema)}] if schema else []
    tries += [{"infer_schema_length": rows} for rows in INFER_ROWS]
    for options in tries:
        try:
            frame = pl.read_ndjson(block, **options)
        except (pl.exceptions.PolarsError, ValueError, OverflowError):
            continue
        if "event" not in frame.columns and _all_keys_kept(frame, block):
            schema.update(frame.schema)
            return frame
    return None


def take_jsonl(
    block: bytes,
    curves: Curves,
    reserved: frozenset[str],
    step_keys: tuple[str, ...],
    time_keys: tuple[str, ...],
    schema: dict[str, Any] | None = None,
) -> bool:
    """Add a block of complete JSON lines to `curves`; False (nothing added) when it goes the other way.

    Event lines (a start event's nested config, an error's message) are few: they are parsed
    apart with orjson, and the metric records go through polars. `schema`, kept by the caller
    between blocks, holds the columns seen so far.
    """
    schema = {} if schema is None else schema
    pl = _polars()
    if pl is None:
        return False
    events: list[dict[str, Any]] = []
    if b'"event"' in block:
        split_off = _split_events(block)
        if split_off is None:
            return False
        block, events = split_off
    if block and not block.isspace():  # isspace stops at the first other byte; strip would copy
        frame = _parse_jsonl(block, schema)
        if frame is None:
            return False
        groups: list[tuple[str | None, Any]] = [(None, frame)]
        if "split" in frame.columns and frame.height:
            split = frame.get_column("split")
            if split.dtype not in (pl.String, pl.Null):
                return False
            labels = split.unique(maintain_order=True).to_list()
            if len(labels) > 1:
                groups = [
                    (label or None, frame.filter(split.is_null() if label is None else split == label))
                    for label in labels
                ]
            else:
                groups = [(labels[0] or None, frame)]
        try:
            _add(groups if frame.height else [], curves, reserved, (step_keys, ("epoch",), time_keys))
        except _Refused:
            return False
    for record in events:
        fields = {k: v for k, v in record.items() if k not in ("event", "name", "self")}
        curves.event(str(record["event"]), **fields)
    return True


def take_csv(
    block: bytes, header: list[str], curves: Curves, positions: tuple[tuple[str, ...], ...], skip_lines: int = 0
) -> bool:
    """Add a block of complete CSV rows (no header, no quotes) to `curves`; False when it goes the
    other way. Every column must be numbers (an empty cell is no value, as in Lightning's sparse
    rows); a repeated column name, a word or a row of another length sends the block the other way."""
    pl = _polars()
    if pl is None or len(set(header)) != len(header) or not all(header):
        return False
    try:
        frame = pl.read_csv(
            block,
            has_header=False,
            new_columns=header,
            schema=dict.fromkeys(header, pl.Float64),
            null_values=[""],
            quote_char=None,
            raise_if_empty=False,
            skip_rows=skip_lines,
        )
        lines = block.count(b"\n")
        if frame.height != lines - skip_lines:
            return False
        # polars pads a short row with nulls: where there are nulls (an empty cell or a short row),
        # every line (the header's too) must hold exactly the header's number of separators
        if sum(frame.null_count().row(0)) and block.count(b",") != lines * (len(header) - 1):
            return False
        _add([(None, frame)], curves, frozenset(n for names in positions for n in names), positions)
    except (pl.exceptions.PolarsError, ValueError, OverflowError, _Refused):
        return False
    return True
