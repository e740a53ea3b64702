"""The columns a run's curves live in while they are summarised.

Readers append to growable numpy columns; analysis gets read-only views of the filled part, so a
summary of a million points copies nothing. An append never moves what a view sees: it writes past
the filled part, or into a new buffer of twice the size (the old one lives on while a view holds
it). A value is a float (NaN and ±inf kept: they are what a diagnosis looks for); an unknown step,
epoch or wall time is NaN in its column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

NAN = math.nan
_FIRST_CAPACITY = 64


class _Column:
    """float64 values with room to grow: amortised O(1) appends, copy-free read-only views."""

    __slots__ = ("_buf", "size")

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.float64)
        self.size = 0

    def _room(self, extra: int) -> None:
        need = self.size + extra
        if need > self._buf.size:
            grown = np.empty(max(need, 2 * self._buf.size, _FIRST_CAPACITY), dtype=np.float64)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown  # views of the old buffer keep it alive and unchanged

    def append(self, value: float) -> None:
        self._room(1)
        self._buf[self.size] = value
        self.size += 1

    def extend(self, values: np.ndarray) -> None:
        self._room(values.size)
        self._buf[self.size : self.size + values.size] = values
        self.size += values.size

    def fill(self, value: float, count: int) -> None:
        self._room(count)
        self._buf[self.size : self.size + count] = value
        self.size += count

    def clear(self) -> None:
        self._buf, self.size = np.empty(0, dtype=np.float64), 0  # a view handed out keeps the old buffer

    def view(self) -> np.ndarray:
        out = self._buf[: self.size]
        out.flags.writeable = False
        return out


def as_floats(values: Iterable[float] | np.ndarray) -> np.ndarray:
    """Any run of numbers (a numpy array, an `array("d")`, a list, a generator) as float64."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).ravel()
    try:
        return np.asarray(memoryview(values), dtype=np.float64).ravel()  # type: ignore[arg-type]
    except TypeError:
        return np.fromiter(values, dtype=np.float64)


class Series:
    """One metric's values in the order they were logged, with their step, epoch and wall time."""

    __slots__ = ("name", "_values", "_steps", "_epochs", "_times", "_steps_known")

    def __init__(self, name: str):
        self.name = name
        self._values, self._steps, self._epochs, self._times = _Column(), _Column(), _Column(), _Column()
        self._steps_known = True  # no point without a step so far: steps() is a plain view

    def __len__(self) -> int:
        return self._values.size

    def append(
        self, value: float, step: float | None = None, epoch: float | None = None, t: float | None = None
    ) -> None:
        self._values.append(value)
        if step is None or step != step:
            self._steps_known = False
        self._steps.append(NAN if step is None else step)
        self._epochs.append(NAN if epoch is None else epoch)
        self._times.append(NAN if t is None else t)

    def extend(
        self,
        values: Iterable[float] | np.ndarray,
        steps: Iterable[float] | np.ndarray | None = None,
        epochs: Iterable[float] | np.ndarray | None = None,
        times: Iterable[float] | np.ndarray | None = None,
    ) -> None:
        """Append many points at once; a column given as None is unknown (NaN) for all of them."""
        new = as_floats(values)
        given = [None if c is None else as_floats(c) for c in (steps, epochs, times)]
        if any(c is not None and c.size != new.size for c in given):
            raise ValueError(f"{self.name}: columns of different lengths")
        self._values.extend(new)
        if given[0] is None or (given[0].size and np.isnan(given[0]).any()):
            self._steps_known = self._steps_known and new.size == 0
        for column, values_of in zip((self._steps, self._epochs, self._times), given, strict=True):
            if values_of is None:
                column.fill(NAN, new.size)
            else:
                column.extend(values_of)

    def clear(self) -> None:
        """Forget every point (a whole-file reader re-reads a rewritten file)."""
        for column in (self._values, self._steps, self._epochs, self._times):
            column.clear()
        self._steps_known = True

    def values(self) -> np.ndarray:
        return self._values.view()

    def steps(self) -> np.ndarray:
        """The logged step of each point; where none was logged, its position (0, 1, 2, ...)."""
        steps = self._steps.view()
        if not self._steps_known and np.isnan(steps).any():
            steps = np.where(np.isnan(steps), np.arange(steps.size, dtype=np.float64), steps)
        return steps

    def epochs(self) -> np.ndarray:
        return self._epochs.view()

    def times(self) -> np.ndarray:
        return self._times.view()


@dataclass
class Curves:
    """Every metric of one run or file, and what its reader learnt beside the numbers."""

    series: dict[str, Series] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # event name -> count (start, done, error, ...)
    done_reason: str | None = None
    last_error: str | None = None
    records: int = 0  # records (rows, events, lines) that carried at least one value
    skipped: int = 0  # lines or records that could not be read (torn, malformed), never fatal
    sources: list[str] = field(default_factory=list)  # "<reader>: <file>" for each file read

    def get(self, name: str) -> Series:
        """The series called `name`, created empty on first use."""
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = Series(name)
        return s

    def add(
        self, name: str, value: float, step: float | None = None, epoch: float | None = None, t: float | None = None
    ) -> None:
        self.get(name).append(value, step, epoch, t)

    def event(self, name: str, **fields: object) -> None:
        self.events[name] = self.events.get(name, 0) + 1
        if name == "done":
            self.done_reason = str(fields.get("reason"))
        elif name == "error":
            self.last_error = str(fields.get("message"))[:300]


class Reader(Protocol):
    """One file read incrementally: each call reads only what was appended since the last one.

    A torn last line or frame (a writer half-way through it) is left for the next call; a file
    that shrank or was replaced is read again from the start, after `Curves` has been reset by
    the caller. Nothing a reader meets in a file raises: bad parts are counted in
    `curves.skipped`.
    """

    kind: str  # "jsonl", "csv", "tfevents", "history", "hf_state", "stdout"
    path: Path

    def read_new(self, curves: Curves) -> int:
        """Add what is new in the file to `curves`; return the number of bytes consumed."""
        ...
