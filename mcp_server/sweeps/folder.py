"""The one place that knows a sweep folder's layout, and who may write its state.

runs/sweeps/<sweep_id>/
    sweep.json       what was asked (`SweepSpec`), written once
    state.json       where it is (`SweepState`): every trial with its run, status and best
    optuna.journal   Optuna's study (its JournalFileBackend: a file, no database server)
    stop_requested   present once stop_sweep asked it to stop
    driver.log       the driver's own log
    .driver.lock     flock-ed by the live driver for its whole life

Only the holder of `.driver.lock` writes `state.json` and the journal: the driver while it
lives, `stop_sweep` when it finds none. So "is the driver alive" is "is the lock held", a
question the kernel answers and a killed driver cannot get wrong (no pid to be reused).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel

from mcp_server import safefiles
from mcp_server.errors import InvalidInput, NotFound
from mcp_server.rundir import read_model, write_json_atomic
from mcp_server.sweeps.spec import SweepSpec

SWEEP_ID_RE = re.compile(r"\d{3}-sweep-\d{8}-\d{6}(-\d{1,3})?")
SweepStatusName = Literal["starting", "running", "finished", "stopped", "failed"]
SWEEP_DONE: frozenset[str] = frozenset({"finished", "stopped", "failed"})
# waiting: asked for, its pre-flight running while the trials before it train; launching: being launched
TrialStatus = Literal["waiting", "launching", "queued", "running", "complete", "pruned", "failed", "skipped", "stopped"]
TRIAL_LIVE: frozenset[str] = frozenset({"waiting", "launching", "queued", "running"})


class TrialRow(BaseModel):
    """One trial: its parameters, its run, how it went."""

    number: int
    trial_id: int  # Optuna's
    params: dict[str, Any]
    status: TrialStatus
    run_id: str | None = None
    best: float | None = None  # best value of the sweep's metric so far
    best_at: int | None = None  # the epoch (or step) of it
    last_at: int | None = None  # the last epoch (or step) reported to the pruner
    last: float | None = None  # the value reported then
    at_unit: Literal["epoch", "step"] = "epoch"
    pruned_at: int | None = None
    budget_reached: bool = False  # stopped at trial_budget_s: it counts, with its best so far
    reason: str | None = None  # the pruner's evidence, the pre-flight failure, the run's failure
    started_at: float | None = None
    finished_at: float | None = None


class SweepState(BaseModel):
    """Contents of `state.json`."""

    status: SweepStatusName
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    driver_pid: int | None = None
    driver_started: float | None = None
    restarts: int = 0  # times a driver took over from one that died
    parallel: int | None = None  # trials at once, once the first trial's resource is known
    trials: list[TrialRow] = []
    importance: dict[str, float] | None = None
    failure: str | None = None


class SweepDir:
    """Paths inside one sweep folder."""

    def __init__(self, path: Path):
        self.path = path
        self.sweep_id = path.name

    spec_file = property(lambda self: self.path / "sweep.json")
    state_file = property(lambda self: self.path / "state.json")
    journal = property(lambda self: self.path / "optuna.journal")
    stop_marker = property(lambda self: self.path / "stop_requested")
    driver_log = property(lambda self: self.path / "driver.log")
    lock_file = property(lambda self: self.path / ".driver.lock")

    def read_spec(self) -> SweepSpec:
        return read_model(self.spec_file, SweepSpec, f"sweep {self.sweep_id}'s sweep.json")

    def read_state(self) -> SweepState:
        return read_model(self.state_file, SweepState, f"sweep {self.sweep_id}'s state")

    def write_state(self, state: SweepState) -> None:
        state.updated_at = time.time()
        write_json_atomic(self.state_file, state.model_dump(mode="json"))

    def take_lock(self) -> IO[bytes] | None:
        """The driver's lock, held while the returned file stays open; None if another holds it."""
        fh = safefiles.open_append(self.lock_file)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return fh

    def driver_alive(self) -> bool:
        """Whether a driver holds the lock (it lives), asked without taking it for long."""
        fh = self.take_lock()
        if fh is None:
            return True
        fh.close()
        return False

    @contextlib.contextmanager
    def locked(self, wait_s: float = 0.0) -> Iterator[bool]:
        """Hold the driver's lock for the block (waiting up to `wait_s` for it); yields whether it
        was got: the block may write the state only if so."""
        deadline = time.monotonic() + wait_s
        fh = self.take_lock()
        while fh is None and time.monotonic() < deadline:
            time.sleep(0.1)
            fh = self.take_lock()
        try:
            yield fh is not None
        finally:
            if fh is not None:
                fh.close()


def sweeps_root(runs_root: Path) -> Path:
    return runs_root / "sweeps"


def create(runs_root: Path, stem: str) -> SweepDir:
    """A new, empty sweep folder named after `stem`; never an existing one."""
    root = sweeps_root(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    if root.is_symlink():
        raise safefiles.NotRegular(f"{root} is a symbolic link; trainguard keeps its sweeps in a real folder.")
    for n in range(1000):
        name = stem if n == 0 else f"{stem}-{n}"
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        return SweepDir(root / name)
    raise InvalidInput(f"could not find a free sweep folder name for {stem!r} in {root}.")


def open_sweep(runs_root: Path, sweep_id: str) -> SweepDir:
    """An existing sweep's folder, with `sweep_id` checked so it cannot name a path.

    Raises:
        InvalidInput: not a sweep id, or a link. NotFound: no such sweep.
    """
    if not isinstance(sweep_id, str) or not SWEEP_ID_RE.fullmatch(sweep_id):
        raise InvalidInput(
            f"sweep_id {sweep_id!r} is not a sweep id (NNN-sweep-YYYYMMDD-HHMMSS); sweep_status lists them."
        )
    root = sweeps_root(runs_root)
    path = root / sweep_id
    if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
        raise InvalidInput(f"sweep {sweep_id!r} is a link out of {root}; trainguard only reads sweep folders in it.")
    if not (path / "sweep.json").is_file():
        raise NotFound(f"no sweep {sweep_id!r} in {root}; sweep_status with no argument lists the sweeps there are.")
    for name in ("sweep.json", "state.json"):
        if (path / name).is_symlink():
            raise InvalidInput(f"{path / name} is a symbolic link; trainguard does not follow links in sweep folders.")
    return SweepDir(path)


def all_sweeps(runs_root: Path) -> list[SweepDir]:
    """Every sweep folder, newest first (ids sort by time within an experiment; by mtime across)."""
    root = sweeps_root(runs_root)
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if not SWEEP_ID_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            found.append((os.lstat(os.path.join(entry.path, "sweep.json")).st_mtime, entry.name, entry.path))
        except OSError:
            continue
    return [SweepDir(Path(path)) for _, _, path in sorted(found, reverse=True)]


def spec_summary(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's settings in a few fields (for answers)."""
    return {
        "strategy": spec.strategy,
        "metric": spec.metric,
        "direction": spec.direction,
        "max_trials": spec.max_trials,
        "parallel": spec.parallel,
        "prune": spec.prune.kind,
        "trial_budget_s": spec.trial_budget_s,
    }
