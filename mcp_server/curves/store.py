"""The columns a run's curves live in while they are summarised.

Readers append to compact `array` columns; analysis gets numpy copies (a view would pin the
array's buffer and make the next append fail; copying 1M floats takes about a millisecond). A value is a float
(NaN and ±inf kept: they are what a diagnosis looks for); an unknown step, epoch or wall time
is NaN in its column.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

NAN = math.nan


class Series:
    """One metric's values in the order they were logged, with their step, epoch and wall time."""

    __slots__ = ("name", "_values", "_steps", "_epochs", "_times")

    def __init__(self, name: str):
        self.name = name
        self._values = array("d")
        self._steps = array("d")
        self._epochs = array("d")
        self._times = array("d")

    def __len__(self) -> int:
        return len(self._values)

    def append(self, value: float, step: float | None = None, epoch: float | None = None,
               t: float | None = None) -> None:
        self._values.append(value)
        self._steps.append(NAN if step is None else step)
        self._epochs.append(NAN if epoch is None else epoch)
        self._times.append(NAN if t is None else t)

    def extend(self, values: Iterable[float], steps: Iterable[float] | None = None,
               epochs: Iterable[float] | None = None, times: Iterable[float] | None = None) -> None:
        """Append many points at once; a column given as None is unknown (NaN) for all of them."""
        before = len(self._values)
        self._values.extend(values)
        added = len(self._values) - before
        for column, given in ((self._steps, steps), (self._epochs, epochs), (self._times, times)):
            if given is None:
                column.extend(array("d", [NAN]) * added)
            else:
                column.extend(given)
            if len(column) != len(self._values):
                raise ValueError(f"{self.name}: columns of different lengths")

    def clear(self) -> None:
        """Forget every point (a whole-file reader re-reads a rewritten file)."""
        for column in (self._values, self._steps, self._epochs, self._times):
            del column[:]

    def values(self) -> np.ndarray:
        return _copy(self._values)

    def steps(self) -> np.ndarray:
        """The logged step of each point; where none was logged, its position (0, 1, 2, ...)."""
        steps = _copy(self._steps)
        if steps.size and np.isnan(steps).any():
            steps = np.where(np.isnan(steps), np.arange(steps.size, dtype=np.float64), steps)
        return steps

    def epochs(self) -> np.ndarray:
        return _copy(self._epochs)

    def times(self) -> np.ndarray:
        return _copy(self._times)


def _copy(column: array) -> np.ndarray:
    return np.array(column, dtype=np.float64)  # one C call: no buffer view left for an append to trip on


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

    def add(self, name: str, value: float, step: float | None = None, epoch: float | None = None,
            t: float | None = None) -> None:
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
