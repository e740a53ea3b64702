"""The one place that knows a run folder's layout and writes its JSON files atomically.

runs/<run_id>/
    manifest.json    what was launched (`Manifest`): argv, config, env, versions, host (written once)
    state.json       where it is: status, pids, exit code (rewritten as it changes)
    stop_requested   present once someone asked the run to stop
    stdout.log, stderr.log, supervisor.log
    metrics.jsonl    the trainer's metrics stream
    checkpoints/
    torchrun/        torchrun's per-rank error files (a torchrun run)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mcp_server import procs, safefiles
from mcp_server.backends.model import BackendName, Resources
from mcp_server.errors import InvalidInput, NotFound
from mcp_server.watchdog import WatchdogConfig

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# pruned: stopped early by its sweep's pruner (a losing trial); `stopped_because` holds the evidence
Status = Literal["starting", "queued", "running", "succeeded", "failed", "stopped", "pruned", "lost"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "pruned", "lost"})
STOP_OUTCOMES = ("stopped", "pruned")  # what a stop request may ask the run to be recorded as


class RunState(BaseModel):
    """Contents of `state.json`. Written by the launcher, then only by the run's supervisor
    (or by a status check that finds the supervisor dead)."""

    status: Status
    updated_at: float
    supervisor_pid: int | None = None
    supervisor_started: float | None = None
    pid: int | None = None
    pid_started: float | None = None
    pgid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    failure: str | None = None
    events: list[dict[str, Any]] = []  # watchdog firings: {t, kind, action, detail}
    resource: str | None = None  # gpu or cpu: the slot it needs (slots.py)
    slots: list[int] = []  # the slots it holds: the GPUs' indices for a GPU run
    queued_at: float | None = None  # when it started waiting for a slot, if it had to
    orphaned_at: float | None = None  # when a status check found the supervisor dead and the trainer alive
    job_id: str | None = None  # Slurm's job id (backend slurm)
    slurm_state: str | None = None  # Slurm's state of the job when last seen (PENDING, RUNNING, TIMEOUT...)
    slurm_reason: str | None = None  # Slurm's reason a pending job waits (Priority, Resources, BeginTime...)
    requeues: int = 0  # times the job went back to Slurm's queue (time limit, preemption) and resumed
    headline: str | None = None  # the curves' final headline, written with the outcome: list_runs reads no log
    findings: list[str] | None = None  # the rules of the curves' warn and fail findings, written with it too
    stopped_because: str | None = None  # who stopped it and why (a sweep's pruner with its evidence, a trial budget)

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str | None) -> str | None:
        return _job_id(value)


def _job_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d{1,12}(_\d{1,8})?", value):
        raise ValueError(f"{value!r} is not a Slurm job id")
    return value


class Manifest(BaseModel):
    """Contents of `manifest.json`: what was launched, written once before the trainer starts."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    created_at: str
    experiment: str
    experiment_dir: str
    source: str
    title: str
    hypothesis: str = ""
    trainer: str
    primary_metric: str
    primary_mode: Literal["min", "max"] = "min"
    config: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, Any] = Field(default_factory=dict)
    argv: list[str] = Field(min_length=1)
    env: dict[str, str]
    cwd: str
    project_dir: str
    agent: str
    note: str = ""
    acknowledged: list[str] = Field(default_factory=list)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    resource: Literal["gpu", "cpu"] = "cpu"
    backend: BackendName = "local"
    resources: Resources = Field(default_factory=Resources)
    job_id: str | None = None  # Slurm's, once submitted
    resume_flag: str | None = None  # the trainer's resume flag: a requeued Slurm job resumes with it
    resume_checkpoint: str | None = None  # glob, in the checkpoints folder, of what it resumes from
    sweep_id: str | None = None  # the sweep this run is a trial of (mcp_server.sweeps)
    trial: int | None = None  # its trial number in that sweep

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str | None) -> str | None:
        return _job_id(value)

    chance: dict[str, float] | None = None  # chance level of an accuracy metric, by name (spec, then experiment)
    remedies: dict[str, str] = Field(default_factory=dict)  # the trainer spec's own remedy per diagnosis rule
    git_commit: str | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    host: dict[str, Any] = Field(default_factory=dict)
    gpus: list[Any] = Field(default_factory=list)
    preflight: dict[str, Any] = Field(default_factory=dict)


class RunDir:
    """Paths inside one run folder."""

    def __init__(self, path: Path):
        self.path = path
        self.run_id = path.name

    manifest = property(lambda self: self.path / "manifest.json")
    state_file = property(lambda self: self.path / "state.json")
    stop_marker = property(lambda self: self.path / "stop_requested")
    stdout = property(lambda self: self.path / "stdout.log")
    stderr = property(lambda self: self.path / "stderr.log")
    supervisor_log = property(lambda self: self.path / "supervisor.log")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")

    def stop_request(self) -> dict[str, Any]:
        """What the stop marker asks: {"outcome": "stopped" or "pruned", "because": why}; {} when
        nobody asked, or the marker is not one of ours (an empty or damaged file: a plain stop)."""
        try:
            data = json.loads(safefiles.read_bytes(self.stop_marker, follow_links=False, limit=64 * 1024))
        except (OSError, ValueError, safefiles.NotRegular):
            return {}
        if not isinstance(data, dict):
            return {}
        outcome = data.get("outcome") if data.get("outcome") in STOP_OUTCOMES else "stopped"
        because = data.get("because") if isinstance(data.get("because"), str) else None
        return {"outcome": outcome, "because": because[:600] if because else None}

    def read_manifest(self) -> Manifest:
        """The manifest, validated.

        Raises:
            InvalidInput: naming the file and what is wrong with it (a link, not JSON, a field).
        """
        return read_model(self.manifest, Manifest, f"run {self.run_id}'s manifest")

    def read_state(self) -> RunState:
        """The state, validated. A launch writes it before the manifest, so a run without one
        is damaged (a launch from before that rule, or a hand-made folder).

        Raises:
            InvalidInput: naming the file and what is wrong with it.
        """
        try:
            return read_model(self.state_file, RunState, f"run {self.run_id}'s state")
        except FileNotFoundError:
            raise InvalidInput(
                f"{self.state_file} is missing: the launch that made this folder did not finish. "
                "Delete the folder if it holds nothing you need."
            ) from None

    def write_state(self, state: RunState) -> None:
        state.updated_at = time.time()
        write_json_atomic(self.state_file, state.model_dump())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock: whoever records an outcome for a run without its supervisor
        (a status check that finds it dead) does it under this, so it is done once."""
        with safefiles.open_append(self.path / ".lock") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield


MAX_JSON_BYTES = 16 * 2**20  # a manifest or state is a few KB; anything this big is not ours


def read_model(path: Path, model: type[BaseModel], what: str) -> Any:
    data = safefiles.read_bytes(path, follow_links=False, limit=MAX_JSON_BYTES)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InvalidInput(
            f"{what} {path} is damaged ({where}: {first['msg']}; {len(errors)} problem(s)); "
            "trainguard cannot use this run. Move the folder out of the runs folder, "
            "or delete it if it holds nothing you need."
        ) from None


def open_run(runs_root: Path, run_id: str) -> RunDir:
    """The folder of an existing run, with `run_id` checked so it cannot name a path.

    Raises:
        InvalidInput: if `run_id` is not a plain run id.
        NotFound: if there is no such run.
    """
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id in (".", ".."):
        raise InvalidInput(f"run_id {run_id!r} is not a run id; call list_runs for the ids there are.")
    path = os.path.join(runs_root, run_id)  # the id has no "/": a name in the runs folder (plain os calls: every poll)
    try:
        folder = os.lstat(path)
        os.lstat(os.path.join(path, "manifest.json"))
    except OSError:
        raise NotFound(f"no run {run_id!r} in {runs_root}; call list_runs for the ids there are.") from None
    if stat.S_ISLNK(folder.st_mode):
        raise InvalidInput(f"run {run_id!r} is a link out of {runs_root}; trainguard only reads run folders in it.")
    for name in ("manifest.json", "state.json", "stdout.log", "stderr.log", "metrics.jsonl", "supervisor.log"):
        try:
            link = stat.S_ISLNK(os.lstat(os.path.join(path, name)).st_mode)
        except OSError:
            continue
        if link:
            raise InvalidInput(
                f"{os.path.join(path, name)} is a symbolic link; trainguard does not follow links in run folders."
            )
    return RunDir(Path(path))


def all_runs(runs_root: Path) -> list[RunDir]:
    """Every run folder (one with a manifest, not a link), oldest first by id."""
    return [RunDir(Path(path)) for path, _ in sorted(_scan(runs_root))]


def newest_runs(runs_root: Path) -> list[str]:
    """Every run folder's path, newest first by its manifest's time: one directory read and one
    lstat per run (a `RunDir` is made only for the rows shown), so listing a page costs little
    more with 1,000 runs than with 10."""
    return [path for path, _ in sorted(_scan(runs_root), key=lambda pair: pair[1], reverse=True)]


def _scan(runs_root: Path) -> list[tuple[str, float]]:
    """(run, its manifest's mtime) for each folder whose name is a run id and that holds a manifest
    (a link there included: reading it says it is one); links to folders are no runs."""
    try:
        entries = list(os.scandir(runs_root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        if not RUN_ID_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            mtime = os.lstat(os.path.join(entry.path, "manifest.json")).st_mtime
        except OSError:
            continue
        found.append((entry.path, mtime))
    return found


def create_run_dir(runs_root: Path, stem: str) -> RunDir:
    """Make a new, empty run folder named after `stem`; never reuses an existing one."""
    runs_root.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        name = stem if n == 0 else f"{stem}-{n}"
        try:
            (runs_root / name).mkdir()
        except FileExistsError:
            continue
        return RunDir(runs_root / name)
    raise InvalidInput(f"could not find a free run folder name for {stem!r} in {runs_root}.")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file in the same folder and a rename: readers never see half a
    file, and a link at `path` is replaced, never written through."""
    safefiles.write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def run_pids(runs_root: Path) -> tuple[dict[int, str], dict[int, str]]:
    """pid -> run id of every live process of this root's runs (trainers and their children, by
    process group): (those of active runs, those of finished runs that something left alive)."""
    active: dict[int, str] = {}
    finished: dict[int, str] = {}
    for run in all_runs(runs_root):
        try:
            state = run.read_state()
        except (OSError, InvalidInput):
            continue
        if state.pgid is None:
            continue
        into = finished if state.status in TERMINAL else active
        for pid in procs.RunProcesses(run.run_id, state.pid, state.pid_started, str(run.path)).members():
            into.setdefault(pid, run.run_id)
    return active, finished
