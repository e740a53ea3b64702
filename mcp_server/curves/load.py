"""Which of a run's files its curves come from, read incrementally and kept between calls.

A run may write several logs of the same numbers (the PPO trainer writes our JSONL, CSVs and
TensorBoard events). Each file gets its own reader and its own `Curves`; the summary uses the
first, in the readers' order of preference (metrics.jsonl, TensorBoard, CSV, trainer_state.json,
history.json, stdout), that holds any metric, and names the others. Our JSONL's events (done,
error) are kept whichever file the numbers come from.

Kept in memory between calls (a small LRU), so a repeated summary of a growing run reads only
the bytes appended since the last one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mcp_server.curves.readers import SNIFF_BYTES, candidates, detect, kind_rank
from mcp_server.curves.store import Curves, Reader

CACHE_RUNS = 24  # folders kept read (list_runs shows 20; a finished run needs none: its headline is in state.json)
CACHE_POINTS = 20_000_000  # and at most this many points in all (32 bytes each: about 640 MB)


@dataclass
class _Source:
    reader: Reader
    curves: Curves = field(default_factory=Curves)

    def read(self) -> int:
        """Read what is new; start again with fresh curves when the file was replaced or cut."""
        before = (getattr(self.reader, "rewinds", 0), getattr(self.reader, "offset", 0))
        consumed = self.reader.read_new(self.curves)
        after = (getattr(self.reader, "rewinds", 0), getattr(self.reader, "offset", 0))
        if after[0] > before[0] or after[1] < before[1]:
            fresh = detect(self.reader.path)
            if fresh is not None:
                self.reader, self.curves = fresh, Curves()
                consumed = self.reader.read_new(self.curves)
        return consumed

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.curves.series.values())


@dataclass
class Loaded:
    """A folder's curves: those the summary uses, where they came from, and what else was found."""

    curves: Curves
    source: str | None  # "<kind>: <file>" of the file the metrics come from
    also_found: list[str]  # the other files with metrics, not used
    bytes_read: int  # on this call: what was new since the last one


class _Folder:
    def __init__(self) -> None:
        self.sources: dict[Path, _Source] = {}
        self.rejected: dict[Path, tuple[int, int]] = {}  # files no reader fits, as they looked (`_look`)
        self.lock = threading.Lock()

    def load(self, folder: Path) -> Loaded:
        """Read every log file found in `folder` (the caller holds self.lock). A file gets its
        reader once; one that none fits is looked at again only when its first bytes may differ."""
        found = candidates(folder)
        for path, choose in found:
            if path in self.sources:
                continue
            look = _look(path)
            if look is None or self.rejected.get(path) == look:
                continue
            reader = choose(path)
            if reader is None:
                self.rejected[path] = look
            else:
                self.sources[path] = _Source(reader)
                self.rejected.pop(path, None)
        read = sum(s.read() for s in self.sources.values())
        rank = {path: i for i, (path, _) in enumerate(found)}
        with_metrics = sorted(  # the readers' order of preference: by kind, then as `candidates` lists them
            (s for s in self.sources.values() if s.curves.series),
            key=lambda s: (kind_rank(s.reader.kind), rank.get(s.reader.path, len(rank))),
        )
        events = next((s.curves for s in self.sources.values() if s.reader.kind == "jsonl"), None)
        if not with_metrics:
            return Loaded(curves=events or Curves(), source=None, also_found=[], bytes_read=read)
        chosen = with_metrics[0]
        curves = chosen.curves
        if events is not None and events is not curves:  # numbers from elsewhere, events from our JSONL
            curves = Curves(
                series=curves.series,
                events=events.events,
                done_reason=events.done_reason,
                last_error=events.last_error,
                records=curves.records,
                skipped=curves.skipped,
                sources=curves.sources,
            )
        return Loaded(
            curves=curves,
            source=f"{chosen.reader.kind}: {chosen.reader.path}",
            also_found=[f"{s.reader.kind}: {s.reader.path}" for s in with_metrics[1:]][:5],
            bytes_read=read,
        )

    @property
    def points(self) -> int:
        return sum(s.points for s in self.sources.values())


def _look(path: Path) -> tuple[int, int] | None:
    """What decides a file's reader: its first bytes, told by its inode and how many there are
    (up to what a sniff reads); None: not there."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, min(st.st_size, SNIFF_BYTES))


_cache: OrderedDict[Path, _Folder] = OrderedDict()
_cache_lock = threading.Lock()


@contextmanager
def loaded(folder: Path) -> Iterator[Loaded]:
    """The curves of a run folder (or any folder or single log file), reading only what is new,
    held for the `with` block: no other call appends to them while they are analysed."""
    key = folder.resolve()
    with _cache_lock:
        entry = _cache.pop(key, None) or _Folder()
        _cache[key] = entry
    with entry.lock:
        yield entry.load(key)
    with _cache_lock:
        while len(_cache) > CACHE_RUNS or (len(_cache) > 1 and sum(f.points for f in _cache.values()) > CACHE_POINTS):
            _cache.popitem(last=False)


def forget(folder: Path) -> None:
    """Drop a folder's cached curves (tests; a run folder deleted)."""
    with _cache_lock:
        _cache.pop(folder.resolve(), None)
