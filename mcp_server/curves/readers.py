"""Readers that turn whatever a trainer writes into `Curves`, incrementally and without raising.

Formats (one reader each, `kind` in brackets):

- [jsonl] our metrics stream (trainers/trainkit.py): records `{"t", "step", "epoch"?, "split",
  <name>: number...}` become series `"{split}/{name}"`; events `{"t", "event", ...}` are counted.
  Non-finite values arrive as the strings "nan", "inf", "-inf" ("NaN", "Infinity" too). Any other
  tool's JSON lines work as well: each numeric field of an object is a series, its step taken
  from "step", "global_step", "iteration", "iter" or "_step", its epoch from "epoch".
- [csv] a header row, then rows: PPO's per-update and per-episode logs, Lightning's `metrics.csv`
  (sparse: train and val metrics on different rows; an empty cell is no value, not zero).
- [history] a whole-file `history.json`: equal-length per-epoch lists (seed 001's TRM trainer).
- [hf_state] a whole-file Hugging Face `trainer_state.json`: its `log_history` entries.
- [stdout] printed lines such as `Epoch 2/100 - Train Loss: 1.2345, Train Acc: 0.5678 ...`.
- [tfevents] TensorBoard event files, read by `mcp_server.curves.tfevents`.

Stream readers (jsonl, csv, stdout) remember how far they got and read only what was appended;
a torn last line (no newline yet) waits for the next call; a file that shrank, was replaced or
was rewritten in place (its first bytes changed) is read again from its start, which `rewinds`
counts. Whole-file readers (history, hf_state) read again when the file's size or mtime changes
and replace the series they own.

Speed: the JSONL reader parses ~1 MiB of lines with one `orjson.loads` call, groups the
objects by split and pulls each key's column out with a C-level map, so no Python code runs
per record. A million records (121 MB) took 1.5 s with orjson and 2.9 s
with the standard library's json on a 2-core VM, of which the parsing alone 0.5 s and 1.9 s.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import operator
import os
import re
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import compress, repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mcp_server import safefiles
from mcp_server.curves import columnar
from mcp_server.curves.names import number as _number
from mcp_server.curves.records import parse_lines as _parse_json_lines
from mcp_server.curves.store import Curves, Reader

_LOADS: Callable[[bytes], Any] = orjson.loads  # about 4 times json's speed; json re-reads what it refuses

STEP_KEYS = ("step", "global_step", "iteration", "iter", "_step")
TIME_KEYS = ("t", "time", "timestamp", "wall_time")
JSONL_RESERVED = frozenset({"split", "event", "epoch", *STEP_KEYS, *TIME_KEYS})
CSV_STEP_KEYS = ("step", "global_step", "episode", "update", "iteration", "iter")
CSV_TIME_KEYS = ("time", "timestamp", "wall_time")
CSV_POSITIONS = (CSV_STEP_KEYS, ("epoch",), CSV_TIME_KEYS)
CHUNK_BYTES = 1 << 20  # lines parsed per `loads` call: bounded memory, one bad line costs one chunk
READ_BYTES = 64 << 20  # bytes read from the file at a time (polars parses bigger blocks faster per byte)
PREFIX_BYTES = 64  # the first bytes remembered to notice a file rewritten in place


# ---------------------------------------------------------------------------------------------
# Small helpers


def _as_array(values: np.ndarray) -> array:
    """A float64 numpy array as the `array("d")` that `Series.extend` appends in one copy."""
    return array("d", np.ascontiguousarray(values, dtype=np.float64).tobytes())


def _note_source(curves: Curves, reader: Reader) -> None:
    source = f"{reader.kind}: {reader.path}"
    if source not in curves.sources:
        curves.sources.append(source)


# ---------------------------------------------------------------------------------------------
# Stream readers: the appended bytes, complete lines only


class _LineStream:
    """The byte offset reached in a growing file, and what it takes to notice a new file there."""

    kind = "stream"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.offset = 0
        self.rewinds = 0  # times the file was read again from its start (shrunk, replaced, rewritten)
        self._inode: int | None = None
        self._prefix = b""

    def _blocks(self) -> Iterator[bytes]:
        """Each new run of complete lines (ending in b"\\n"); the offset moves past what is yielded.

        Read READ_BYTES at a time from the offset, so the torn end of one read is read again by
        the next instead of being copied onto it; a longer line doubles the read until it ends.
        """
        try:
            fh = safefiles.open_read(self.path)  # never blocks: a FIFO in a log's place is skipped
        except (OSError, safefiles.NotRegular):
            return
        with fh:
            st = os.fstat(fh.fileno())
            if self._moved(fh, st):
                self.offset, self._prefix = 0, b""
                self.rewinds += 1
                self._rewound()
            self._inode = st.st_ino
            size = READ_BYTES
            while True:
                fh.seek(self.offset)
                # no more than the file held at the fstat (a READ_BYTES buffer for the few lines a
                # live run appended costs a memory mapping each call); what it gained since is read next time
                data = fh.read(min(size, max(st.st_size - self.offset, 0) + 1))
                cut = data.rfind(b"\n") + 1
                if not cut:
                    if len(data) < size:
                        return  # nothing new, or a torn last line
                    size *= 2
                    continue
                if self.offset < PREFIX_BYTES:
                    self._prefix = (self._prefix + data[:cut])[:PREFIX_BYTES]
                self.offset += cut
                yield data if cut == len(data) else data[:cut]

    def read_new(self, curves: Curves) -> int:
        """Add the complete lines appended since the last call; return the bytes consumed."""
        _note_source(curves, self)
        start, rewinds = self.offset, self.rewinds
        for block in self._blocks():
            self._take(block, curves)
        return self.offset if self.rewinds != rewinds else self.offset - start

    def _take(self, block: bytes, curves: Curves) -> None:
        """Add the values of a run of complete lines to `curves`."""
        raise NotImplementedError

    def _rewound(self) -> None:
        """Forget what was learnt from the file's earlier content (a subclass's header)."""

    def _moved(self, fh: io.BufferedReader, st: os.stat_result) -> bool:
        """Whether the file is not the one read so far: shrunk, another inode, other first bytes."""
        if self.offset == 0:
            return False
        if st.st_size < self.offset or (self._inode is not None and st.st_ino != self._inode):
            return True
        if self._prefix:
            head = fh.read(len(self._prefix))
            fh.seek(0)
            return head != self._prefix
        return False


# ---------------------------------------------------------------------------------------------
# JSONL


class JsonlReader(_LineStream):
    """Our metrics stream, or any file of one JSON object per line (see the module docstring)."""

    kind = "jsonl"
    fast = True  # False: always line by line with orjson (the tests compare both ways)
    # A smaller block goes line by line too: a polars frame costs ~3 ms whatever its size, so
    # orjson is faster up to a few MB (1,000 lines: 2.9 against 8 ms; 100,000: 165 against 94).
    columnar_from = 2 * 2**20

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        self._schema: dict[str, Any] = {}  # the columns polars found in the blocks so far

    def _rewound(self) -> None:
        self._schema = {}

    def _take(self, block: bytes, curves: Curves) -> None:
        if (
            self.fast
            and len(block) >= self.columnar_from
            and columnar.take_jsonl(block, curves, JSONL_RESERVED, STEP_KEYS, TIME_KEYS, self._schema)
        ):
            return
        for chunk in _chunks(block, CHUNK_BYTES):
            records, bad = _parse_lines(chunk)
            curves.skipped += bad
            if records:
                _add_records(records, curves, b"true" in chunk or b"false" in chunk)


def _chunks(block: bytes, size: int) -> Iterator[bytes]:
    """`block` (complete lines) cut after a newline every `size` bytes or so."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + size) + 1 or len(block)
        yield block[start:end]
        start = end


def _parse_lines(chunk: bytes) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a run of complete lines, and how many lines were not one (curves.records)."""
    return _parse_json_lines(chunk, _LOADS)


def _by_split(records: list[dict[str, Any]], keys: set[str]) -> Iterator[tuple[str | None, list[dict[str, Any]]]]:
    """The records grouped by split, in first-seen order, each group with its series-name prefix."""
    if "split" not in keys:
        yield None, records
        return
    splits = list(map(dict.get, records, repeat("split")))
    try:
        distinct = list(dict.fromkeys(splits))
    except TypeError:  # a list or an object as split: no prefix
        splits = [s if isinstance(s, str) else None for s in splits]
        distinct = list(dict.fromkeys(splits))
    for split in distinct:
        prefix = (split if isinstance(split, str) else str(split)) if split else None
        if len(distinct) == 1:
            yield prefix, records
        else:
            yield prefix, list(compress(records, map(operator.eq, splits, repeat(split))))


def _columns(records: list[dict[str, Any]], keys: set[str]) -> dict[str, list[Any]]:
    """Each key's values over the records, None where a record lacks it (a C-speed map per key)."""
    return {key: list(map(dict.get, records, repeat(key))) for key in keys}


def _floats(values: list[Any], maybe_bool: bool) -> tuple[array, np.ndarray | None] | None:
    """Values as an array of floats and a mask of the numbers among them (None: all are numbers).

    Booleans are not numbers; "nan", "inf", "-inf" (and "NaN", "Infinity") are. `maybe_bool`
    False says the text had no `true`/`false`, so an `array("d")` of the list is enough: a
    string or None (a missing key, a null) makes it raise and go the slow way. None when no
    value is a number.
    """
    if not maybe_bool or set(map(type, values)) <= {float, int}:
        with contextlib.suppress(TypeError, OverflowError):
            return array("d", values), None
    if values.count(None) == len(values):
        return None  # a key of another split's records
    numbers = [_number(v) for v in values]
    present = np.array([v is not None for v in numbers], dtype=bool)
    if not present.any():
        return None
    return array("d", [math.nan if v is None else v for v in numbers]), present


def _position(columns: dict[str, list[Any]], names: tuple[str, ...], maybe_bool: bool) -> array | None:
    """The first of `names` among the columns, as floats (NaN where absent or not a number)."""
    for name in names:
        if name in columns:
            floats = _floats(columns[name], maybe_bool)
            if floats is None:
                return None
            values, present = floats
            if present is not None:
                values = _as_array(np.where(present, np.frombuffer(values), math.nan))
            return values
    return None


def _add_events(records: list[dict[str, Any]], curves: Curves) -> list[dict[str, Any]]:
    """Count the event records; return the others."""
    is_event = ["event" in r for r in records]
    for record, event in zip(records, is_event, strict=True):
        if event:
            fields = {k: v for k, v in record.items() if k not in ("event", "name", "self")}  # event()'s own
            curves.event(str(record["event"]), **fields)
    return list(compress(records, map(operator.not_, is_event)))


def _add_records(records: list[dict[str, Any]], curves: Curves, maybe_bool: bool) -> None:
    """Append the values of parsed JSON objects to their series: split by split, column by column."""
    keys: set[str] = set().union(*records)
    if "event" in keys:
        records = _add_events(records, curves)
    if not records:
        return
    groups = list(_by_split(records, keys))
    for prefix, group in groups:
        columns = _columns(group, keys - {"split", "event"})
        steps = _position(columns, STEP_KEYS, maybe_bool)
        epochs = _position(columns, ("epoch",), maybe_bool)
        times = _position(columns, TIME_KEYS, maybe_bool)
        carried: np.ndarray | bool = False
        for key in columns.keys() - JSONL_RESERVED:
            floats = _floats(columns[key], maybe_bool)
            if floats is None:
                continue
            values, present = floats
            carried = True if present is None else carried | present
            _extend(curves, f"{prefix}/{key}" if prefix else key, values, present, steps, epochs, times)
        curves.records += len(group) if carried is True else int(np.count_nonzero(carried))


def _extend(
    curves: Curves,
    name: str,
    values: array,
    keep: np.ndarray | None,
    steps: array | None,
    epochs: array | None,
    times: array | None,
) -> None:
    """Append the kept rows of a value column (and of its position columns) to series `name`."""

    def pick(column: array | None) -> array | None:
        if column is None or keep is None:
            return column
        return _as_array(np.frombuffer(column)[keep])

    curves.get(name).extend(pick(values), pick(steps), pick(epochs), pick(times))


# ---------------------------------------------------------------------------------------------
# CSV


class CsvReader(_LineStream):
    """A header row then rows: every numeric column but the step, epoch and time is a series.

    The step is the first of "step", "global_step", "episode", "update", "iteration", "iter";
    the epoch is "epoch"; the wall time "time", "timestamp" or "wall_time". Empty cells are no
    value (Lightning writes train and val metrics on separate rows); a row whose length differs
    from the header's is skipped.

    Speed: a run of rows with no quote, no empty cell and the header's number of cells on every
    line (the common case) is converted ~1 MiB at a time as one JSON array of numbers (or, when
    orjson refuses it, e.g. for "nan", with `float` over its cells) into a (rows, columns) table,
    and each column appended at once: 1M rows of `step,epoch,time,loss,lr` took 0.65 s where the
    csv module row by row took 6 s. Anything else (quotes, sparse rows, words, non-ASCII, CR)
    goes row by row through the csv module, with the same results.
    """

    kind = "csv"
    fast = True  # False: always row by row (the tests compare both ways)

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path)
        self.header: list[str] | None = None
        self._plan: _CsvPlan | None = None

    def _take(self, block: bytes, curves: Curves) -> None:
        start = 0  # where the rows begin: after the header, if this block holds it
        while self.header is None and start < len(block):  # the header row first, alone
            end = block.find(b"\n", start) + 1
            if b'"' in block[start:end]:
                break
            self._take_rows(block[start:end], curves)
            start = end
        if start == len(block):
            return
        if (
            self.fast
            and self.header
            and columnar.take_csv(block, self.header, curves, CSV_POSITIONS, skip_lines=block.count(b"\n", 0, start))
        ):
            return
        block = block[start:] if start else block
        if not (self.fast and self.header) or not _plain_ascii(block):
            self._take_rows(block, curves)
            return
        if self._plan is None or self._plan.header != self.header:
            self._plan = _CsvPlan(self.header)
        for chunk in _chunks(block, CHUNK_BYTES):  # no quotes: lines stand alone, cutting between them is safe
            table = _csv_table(chunk, len(self.header))
            if table is None:
                self._take_rows(chunk, curves)
            else:
                self._plan.add(table, curves)

    def _take_rows(self, block: bytes, curves: Curves) -> None:
        """The slow way: row by row through the csv module."""
        for row in _csv_rows(block.decode("utf-8", errors="replace")):
            if row is None:
                curves.skipped += 1
            elif self.header is None:
                self.header = [h.strip().lstrip("\ufeff") for h in row]
            else:
                self._add_row(row, curves)

    def _rewound(self) -> None:
        self.header = None
        self._plan = None

    def _add_row(self, row: list[str], curves: Curves) -> None:
        header = self.header or []
        if not row or (len(row) == 1 and not row[0].strip()):
            return
        if len(row) != len(header):
            curves.skipped += 1
            return
        cells = dict(zip(header, row, strict=True))
        step = _first_number(cells, CSV_STEP_KEYS)
        epoch = _first_number(cells, ("epoch",))
        t = _first_number(cells, CSV_TIME_KEYS)
        position = {k for k in (*CSV_STEP_KEYS, "epoch", *CSV_TIME_KEYS) if k in cells}
        carried = False
        for name, cell in cells.items():
            if name in position or not name:
                continue
            value = _cell_number(cell)
            if value is not None:
                curves.add(name, value, step, epoch, t)
                carried = True
        curves.records += carried


class _CsvPlan:
    """Which column of a header feeds which series, as `CsvReader._add_row` picks them."""

    def __init__(self, header: list[str]):
        self.header = list(header)
        index = {name: i for i, name in enumerate(header)}  # a repeated name: its last cell, as dict(zip()) keeps
        self.step = _first_index(index, CSV_STEP_KEYS)
        self.epoch = _first_index(index, ("epoch",))
        self.time = _first_index(index, CSV_TIME_KEYS)
        position = {*CSV_STEP_KEYS, "epoch", *CSV_TIME_KEYS}
        self.values = [(name, i) for name, i in index.items() if name and name not in position]

    def add(self, table: np.ndarray, curves: Curves) -> None:
        """Append a (rows, columns) table of numbers: every cell of a value column is a point."""
        steps, epochs, times = (
            None if i is None else _as_array(table[:, i]) for i in (self.step, self.epoch, self.time)
        )
        for name, i in self.values:
            curves.get(name).extend(_as_array(table[:, i]), steps, epochs, times)
        if self.values:
            curves.records += len(table)


def _first_index(index: dict[str, int], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in index:
            return index[name]
    return None


def _plain_ascii(block: bytes) -> bool:
    """No quote (a cell may span lines), no CR (a line end too), no NUL, nothing but ASCII."""
    return b'"' not in block and b"\r" not in block and b"\0" not in block and block.isascii()


_NOT_JSON_NUMBERS = (b"t", b"f", b"n", b"[", b"{")  # true, false, null, inf, nan, lists, objects
_MINUS_ZERO = re.compile(rb"-0(?![.eE0-9])")  # JSON reads an integer -0 as 0, float() as -0.0


def _csv_table(chunk: bytes, ncols: int) -> np.ndarray | None:
    """Complete lines of plain ASCII as a (rows, ncols) float64 table; None unless every line has
    ncols cells, none empty or past the csv module's field size limit, each one a `float()`."""
    data = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero((data == ord(",")) | (data == ord("\n")))  # where each cell ends
    rows = chunk.count(b"\n")
    if not rows or ends.size != rows * ncols or not (data[ends[ncols - 1 :: ncols]] == ord("\n")).all():
        return None
    lengths = np.diff(ends, prepend=-1) - 1
    if lengths.min() < 1 or lengths.max() >= csv.field_size_limit():
        return None
    text = chunk[:-1].replace(b"\n", b",")
    values = None
    if not any(c in text for c in _NOT_JSON_NUMBERS) and not (b"-0" in text and _MINUS_ZERO.search(text)):
        with contextlib.suppress(ValueError):  # an overflow (1e400), a leading zero, "1.", ...
            numbers = _LOADS(b"[" + text + b"]")
            if len(numbers) == ends.size:  # no value but numbers, so each is one cell
                values = array("d", numbers)
    if values is None:
        try:
            values = array("d", map(float, text.split(b",")))
        except ValueError:  # a word, a blank cell: row by row
            return None
    return np.frombuffer(values, dtype=np.float64).reshape(rows, ncols)


def _csv_rows(text: str) -> Iterator[list[str] | None]:
    """The rows of CSV text; None for a row the csv module refuses (an over-long field)."""
    rows = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            yield next(rows)
        except StopIteration:
            return
        except csv.Error:
            yield None


def _cell_number(cell: str) -> float | None:
    """A CSV cell as a float ("nan", "inf" included); None for an empty or non-numeric cell."""
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _first_number(cells: dict[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in cells:
            return _cell_number(cells[name])
    return None


# ---------------------------------------------------------------------------------------------
# Whole-file JSON: history.json and trainer_state.json


class _WholeFile:
    """A JSON file rewritten as a whole: read again when its size or mtime changes."""

    kind = "whole"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._signature: tuple[int, int] | None = None
        self._owned: set[str] = set()  # series this reader filled: replaced on a re-read
        self._records = 0

    def read_new(self, curves: Curves) -> int:
        _note_source(curves, self)
        try:
            st = self.path.stat()
            signature = (st.st_size, st.st_mtime_ns)
            if signature == self._signature:
                return 0
            data = json.loads(safefiles.read_bytes(self.path))
        except (OSError, ValueError, RecursionError, safefiles.NotRegular):
            return 0  # missing, or being rewritten: the next call tries again
        self._signature = signature
        for name in self._owned:
            if name in curves.series:
                curves.series[name].clear()
        rows = self._fill(data, curves)
        curves.records += rows - self._records
        self._records = rows
        return signature[0]

    def _fill(self, data: Any, curves: Curves) -> int:
        """Add the file's points to `curves`; return how many rows (epochs, entries) carried one."""
        raise NotImplementedError

    def _add(self, curves: Curves, name: str, value: float, step: float | None, epoch: float | None) -> None:
        self._owned.add(name)
        curves.add(name, value, step, epoch)


class HistoryReader(_WholeFile):
    """`history.json`: `{"train_loss": [...], "val_acc": [...], ...}`, one value per epoch.

    Each list is a series of its key's name; step and epoch are the position + 1. A value that
    is not a number is skipped.
    """

    kind = "history"

    def _fill(self, data: Any, curves: Curves) -> int:
        if not isinstance(data, dict):
            curves.skipped += 1
            return 0
        rows = 0
        for name, values in data.items():
            if not isinstance(values, list):
                continue
            for i, raw in enumerate(values):
                value = _number(raw)
                if value is None:
                    curves.skipped += 1
                    continue
                self._add(curves, str(name), value, i + 1, i + 1)
            rows = max(rows, len(values))
        return rows


class HfStateReader(_WholeFile):
    """Hugging Face `trainer_state.json`: every numeric key of each `log_history` entry.

    An entry is `{"loss": 0.61, "learning_rate": 0.05, "grad_norm": 0.5, "epoch": 0.125,
    "step": 1}` or `{"eval_loss": ..., "eval_accuracy": ..., "epoch": 1.0, "step": 8}`; its
    step and (fractional) epoch go with each of its values.
    """

    kind = "hf_state"

    def _fill(self, data: Any, curves: Curves) -> int:
        history = data.get("log_history") if isinstance(data, dict) else None
        if not isinstance(history, list):
            curves.skipped += 1
            return 0
        rows = 0
        for entry in history:
            if not isinstance(entry, dict):
                curves.skipped += 1
                continue
            step, epoch = _number(entry.get("step")), _number(entry.get("epoch"))
            carried = False
            for name, raw in entry.items():
                value = _number(raw) if name not in ("step", "epoch") else None
                if value is not None:
                    self._add(curves, str(name), value, step, epoch)
                    carried = True
            rows += carried
        return rows


# ---------------------------------------------------------------------------------------------
# Printed lines


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b"
_END = r"(?![\w.:])"  # a whole number: not "00:12" (a time), not "5it/s"
EPOCH_RE = re.compile(r"\bepoch\s*[:=]?\s*(\d+)(?:\s*/\s*\d+)?", re.IGNORECASE)
STEP_RE = re.compile(r"\b(?:step|it|iter|iteration)\s*[:=]?\s*(\d+)\b(?!\.)", re.IGNORECASE)
COLON_PAIR_RE = re.compile(
    rf"(?<![\w.])([A-Za-z][\w/-]*(?: [A-Za-z][\w/-]*){{0,2}})\s*:\s*({_NUM})(%?){_END}", re.IGNORECASE
)
EQUALS_PAIR_RE = re.compile(rf"(?<![\w.])([A-Za-z_][\w./-]*)\s*=\s*({_NUM})(%?){_END}", re.IGNORECASE)
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOT_METRICS = frozenset({"epoch", "step", "it", "iter", "iteration", "v_num"})


class StdoutReader(_LineStream):
    """Lines a training script prints, such as seed 001's

        Epoch 2/100 - Train Loss: 1.2345, Train Acc: 0.5678 Val Loss: 1.1234, Val Acc: 0.5890 *

    A line counts when it has a position, `Epoch N[/M]` or `Step N` / `step N` / `it N`, and at
    least one `Name Words: number` or `name=number` pair; each pair is a series named in lower
    case with underscores ("train_loss", "val_psnr": a unit after the number is dropped, a
    percentage keeps its printed number). Without a step the epoch is the step. Of a line that
    a progress bar redrew with carriage returns only its last drawing counts; other lines are
    ignored, not counted as skipped.
    """

    kind = "stdout"

    def _take(self, block: bytes, curves: Curves) -> None:
        for line in block.decode("utf-8", errors="replace").split("\n"):
            parsed = parse_line(line)
            if parsed is None:
                continue
            step, epoch, pairs = parsed
            for name, value in pairs:
                curves.add(name, value, step, epoch)
            curves.records += 1


def parse_line(line: str) -> tuple[float | None, float | None, list[tuple[str, float]]] | None:
    """A printed line's (step, epoch, [(name, value)...]), or None when it is not a metrics line."""
    line = ANSI_RE.sub("", line.rstrip("\r").rsplit("\r", 1)[-1])
    epoch_match, step_match = EPOCH_RE.search(line), STEP_RE.search(line)
    if epoch_match is None and step_match is None:
        return None
    pairs = []
    for regex in (COLON_PAIR_RE, EQUALS_PAIR_RE):
        for match in regex.finditer(line):
            name = re.sub(r"\s+", "_", match.group(1).strip().lower())
            if name not in NOT_METRICS:
                pairs.append((name, float(match.group(2))))
    if not pairs:
        return None
    epoch = float(epoch_match.group(1)) if epoch_match else None
    step = float(step_match.group(1)) if step_match else epoch
    return step, epoch, pairs


# ---------------------------------------------------------------------------------------------
# Detection and discovery


KIND_ORDER = ("jsonl", "tfevents", "csv", "hf_state", "history", "stdout")
MAX_DEPTH = 4
MAX_FILES = 200
SNIFF_BYTES = 4096


def detect(path: str | os.PathLike[str]) -> Reader | None:
    """The reader for one file, chosen by its name, then by its first bytes; None if none fits."""
    path = Path(path)
    name = path.name
    if name.endswith(".jsonl"):
        return JsonlReader(path)
    if "tfevents" in name:
        reader = _tfevents(path)
        if reader is not None:
            return reader
    if name.endswith(".csv"):
        return CsvReader(path)
    if name == "trainer_state.json":
        return HfStateReader(path)
    if name == "history.json":
        return HistoryReader(path)
    if name in ("stdout.log", "stdout.txt") or name.endswith((".log", ".out")):
        return StdoutReader(path)
    return _sniff(path)


def _tfevents(path: Path) -> Reader | None:
    """A TfEventsReader when the tfevents module is there and the file is one (imported late)."""
    try:
        from mcp_server.curves.tfevents import TfEventsReader, is_tfevents
    except ImportError:
        return None
    return TfEventsReader(path) if is_tfevents(path) else None


def _sniff(path: Path) -> Reader | None:
    """Guess from the first bytes: a JSON object per line, an HF state or history file, CSV, text."""
    try:
        with safefiles.open_read(path) as fh:
            head = fh.read(SNIFF_BYTES)
    except (OSError, safefiles.NotRegular):
        return None
    if not head or b"\x00" in head:
        return _tfevents(path)
    text = head.decode("utf-8", errors="replace")
    first = text.split("\n", 1)[0].strip()
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(first)
        except ValueError:  # a JSON document over many lines
            obj = None
        kind = _json_kind(obj, text)
        return _JSON_READERS[kind](path) if kind else None
    lines = text.split("\n")
    if len(lines) > 2 and "," in first and first.count(",") == lines[1].count(","):
        return CsvReader(path)
    if EPOCH_RE.search(text) or STEP_RE.search(text):
        return StdoutReader(path)
    return None


def _json_kind(first_line: Any, head: str) -> str | None:
    """Which JSON reader fits a file whose first line parsed to `first_line` and that begins with `head`."""
    if isinstance(first_line, dict):
        if "log_history" in first_line:
            return "hf_state"
        values = list(first_line.values())
        if values and all(isinstance(v, list) for v in values):
            return "history"
        return "jsonl"
    if '"log_history"' in head:
        return "hf_state"
    return "history" if re.match(r'\s*\{\s*"[^"]+"\s*:\s*\[', head) else None


_JSON_READERS: dict[str, Callable[[Path], Reader]] = {
    "jsonl": JsonlReader,
    "hf_state": HfStateReader,
    "history": HistoryReader,
}


NOT_LOG_FILES = frozenset({"stderr.log", "supervisor.log", "requirements.txt"})


LISTINGS = 64  # folders whose log files are kept listed
SETTLED_NS = 2 * 10**9  # a folder changed this recently may change again unseen within its mtime's granularity
_listings: OrderedDict[Path, tuple[tuple, tuple[list[Path], list[Path]]]] = OrderedDict()
_listings_lock = threading.Lock()


def log_files(folder: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """The files `discover` considers in a folder: (logs by their name, files that may be logs by
    their first bytes). Of several trainer_state.json only the newest is kept.

    The listing is kept while none of the folders it read changed (their inode and mtime: a stat
    each, where reading them again costs a directory scan each), so a run page polled every two
    seconds walks its run folder only when a file appears or goes."""
    folder = Path(folder)
    with _listings_lock:
        kept = _listings.get(folder)
    if kept is not None and _folder_stamps(kept[0][0]) == kept[0][1]:
        return list(kept[1][0]), list(kept[1][1])
    read: list[Path] = []
    found, guessed, settled = _list_log_files(folder, read)
    stamps = _folder_stamps(read)
    now = time.time_ns()
    if settled and stamps is not None and all(now - mtime > SETTLED_NS for _, mtime in stamps):
        with _listings_lock:
            _listings[folder] = ((tuple(read), stamps), (found, guessed))
            _listings.move_to_end(folder)
            while len(_listings) > LISTINGS:
                _listings.popitem(last=False)
    return list(found), list(guessed)


def _folder_stamps(folders: tuple[Path, ...] | list[Path]) -> tuple[tuple[int, int], ...] | None:
    """Each folder's inode and mtime; None when one is gone."""
    out = []
    for folder in folders:
        try:
            st = os.stat(folder, follow_symlinks=False)
        except OSError:
            return None
        out.append((st.st_ino, st.st_mtime_ns))
    return tuple(out)


def _list_log_files(folder: Path, read: list[Path]) -> tuple[list[Path], list[Path], bool]:
    """`log_files`' walk, and whether its answer depends only on the folders' entries (not so
    with several trainer_state.json: the newest is chosen by the files' own mtimes)."""
    found: list[Path] = []
    guessed: list[Path] = []
    hf_states: list[Path] = []
    for path in safefiles.walk(folder, MAX_DEPTH, MAX_FILES, read):
        name = path.name
        if name == "trainer_state.json":
            hf_states.append(path)
        elif (
            name in ("metrics.jsonl", "history.json", "stdout.log")
            or name.endswith(".csv")
            or (name.startswith("events.out.tfevents."))
        ):
            found.append(path)
        elif name.endswith((".jsonl", ".log", ".out", ".txt")) and name not in NOT_LOG_FILES:
            guessed.append(path)  # a user's own log: kept only if its first bytes look like one
    if hf_states:
        found.append(max(hf_states, key=_newest_state))
    return sorted(found), sorted(guessed), len(hf_states) <= 1


def candidates(folder: str | os.PathLike[str]) -> list[tuple[Path, Callable[[Path], Reader | None]]]:
    """The files that may be a folder's logs (`log_files`; a file: itself), each with how its
    reader is chosen: by its name (`detect`) or, for a file that may be a log, its first bytes."""
    folder = Path(folder)
    if folder.is_file():
        return [(folder, detect)]
    found, guessed = log_files(folder)
    return [(p, detect) for p in found] + [(p, _sniff) for p in guessed]


def kind_rank(kind: str) -> int:
    """A reader kind's place in the order of preference (`KIND_ORDER`)."""
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def discover(folder: str | os.PathLike[str]) -> list[Reader]:
    """Readers for the training logs in a run folder (or any folder), best source first.

    Looks for metrics.jsonl, TensorBoard event files, *.csv, trainer_state.json (only the newest),
    history.json, stdout.log, and other *.jsonl, *.log, *.out and *.txt files whose first bytes
    look like a log, at most MAX_DEPTH folders down and among at most MAX_FILES
    files, skipping hidden folders and files and symbolic links. A file gives [its reader].
    """
    readers = [r for path, choose in candidates(folder) if (r := choose(path)) is not None]
    return sorted(readers, key=lambda r: kind_rank(r.kind))


def signature(folder: str | os.PathLike[str]) -> tuple:
    """What changes when any log of the folder does: each candidate file's path, size, mtime and
    inode (a few stat calls: how a summary knows, without reading, that it is still current)."""
    folder = Path(folder)
    files = [folder] if folder.is_file() else [p for group in log_files(folder) for p in group]
    out = []
    for path in files:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        out.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def _newest_state(path: Path) -> tuple[int, int]:
    """Sort key of a trainer_state.json: its mtime, then its checkpoint-N number."""
    match = re.fullmatch(r"checkpoint-(\d+)", path.parent.name)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (mtime, int(match.group(1)) if match else -1)
