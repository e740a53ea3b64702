"""Running a trainer's data-preparation commands for the data paths that are missing.

A path parameter of a trainer spec may name, under `prepare`, the command that creates it
(e.g. the image folder built from scikit-image's photographs). Pre-flight points to it when
the path is missing; `prepare_data` runs it: an argv list, in the project, in its own
process group leashed to its caller (a cancelled call or an ended server ends it), one at a
time per path, output to a log file, bounded in time. Existing data is never touched.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
from pydantic import BaseModel

from mcp_server import paths, procs, registry, safefiles
from mcp_server.errors import Conflict, InvalidInput, TrainguardError
from mcp_server.preflight import trainer_python, venv_problem
from mcp_server.specs import expand, resolve_config
from mcp_server.textlog import tail

PREPARE_TIMEOUT_S = 1800.0
POLL_S = 0.2


class PreparedPath(BaseModel):
    """One data path: whether it had to be made, and how that went."""

    param: str
    path: str
    action: str
    argv: list[str] | None = None
    seconds: float | None = None
    log: str | None = None


class PrepareResult(BaseModel):
    experiment: str
    paths: list[PreparedPath]
    summary: str


def prepare_commands(
    experiment: str, overrides: dict[str, Any] | None = None, project: Path | None = None
) -> tuple[str, list[tuple[str, Path, list[str] | None]]]:
    """For each path parameter that must exist: (name, resolved path, prepare argv or None)."""
    project = project or paths.project_root()
    exp = registry.load_experiment(experiment, project)
    spec = registry.load_trainer(exp.trainer, project)
    config = resolve_config(spec, [(f"experiment {exp.id}", exp.args), ("overrides", overrides or {})], project)
    python = trainer_python(exp, project)
    problem = venv_problem(python) if exp.python else None
    if problem:
        raise InvalidInput(f"{exp.id}: {problem}; nothing was run. Create the venv, or fix the experiment's `python`.")
    out = []
    for name, param in spec.params.items():
        if param.type != "path" or not param.must_exist or config.get(name) is None:
            continue
        path = paths.confine(project, str(config[name]), what=f"parameter {name!r}")
        argv = (
            expand(param.prepare, python=python, trainer_dir=spec.trainer_dir, project=project, value=str(path))
            if param.prepare
            else None
        )
        out.append((name, path, argv))
    return exp.id, out


def prepare_data(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    project: Path | None = None,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> PrepareResult:
    """Create the experiment's missing data paths with their spec's `prepare` commands, waiting
    for each (the CLI; the MCP tool drives `Preparation` itself so that a cancel stops it).

    Raises:
        TrainguardError: if a missing path has no prepare command, or the command fails
            (the message holds the end of its log).
        Conflict: if another call is preparing the same path.
    """
    project = project or paths.project_root()
    exp_id, commands = prepare_commands(experiment, overrides, project)
    results = []
    for name, path, argv in commands:
        with Preparation.start(exp_id, name, path, argv, project) as job:
            if job.result is None:
                try:
                    code = job.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    job.cancel()
                    raise TrainguardError(
                        f"preparing {name} took over {timeout_s:.0f} s and was stopped; see {job.log}."
                    ) from None
                job.finish(code)
            results.append(job.result)
    return summarize(exp_id, results)


async def prepare_data_async(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    project: Path | None = None,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> PrepareResult:
    """`prepare_data` for an event loop (the MCP tool): the commands start on the loop's own
    thread, so they are leashed to the server's life, and a cancelled call stops them.

    Raises:
        as `prepare_data`.
    """
    project = project or paths.project_root()
    exp_id, commands = await anyio.to_thread.run_sync(prepare_commands, experiment, overrides, project)
    results = []
    for name, path, argv in commands:
        job = Preparation.start(exp_id, name, path, argv, project)
        try:
            if job.result is None:
                assert job.proc is not None
                deadline = time.monotonic() + timeout_s
                while (code := job.proc.poll()) is None:
                    if time.monotonic() > deadline:
                        raise TrainguardError(
                            f"preparing {name} took over {timeout_s:.0f} s and was stopped; see {job.log}."
                        )
                    await anyio.sleep(POLL_S)
                await anyio.to_thread.run_sync(job.finish, code)
            results.append(job.result)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled call still stops its command
                await anyio.to_thread.run_sync(job.close)
    return summarize(exp_id, results)


def summarize(exp_id: str, results: list[PreparedPath]) -> PrepareResult:
    made = [r.param for r in results if r.action == "created"]
    summary = f"created {', '.join(made)}" if made else "all data paths already exist; nothing to do"
    return PrepareResult(experiment=exp_id, paths=results, summary=summary)


class Preparation:
    """One data path being made: its command in a process group of its own, leashed to the
    thread that starts it (it ends if the caller's process ends), under a lock that lets one
    preparation of a path run at a time. Use as a context manager; `result` is set once it is
    known (at once when the path already exists)."""

    def __init__(self, exp_id: str, name: str, path: Path, lock: IO[bytes] | None) -> None:
        self.exp_id, self.name, self.path = exp_id, name, path
        self.lock = lock
        self.proc: subprocess.Popen | None = None
        self.group: procs.RunProcesses | None = None
        self.log: Path | None = None
        self.started = time.monotonic()
        self.argv: list[str] | None = None
        self.result: PreparedPath | None = None

    @classmethod
    def start(cls, exp_id: str, name: str, path: Path, argv: list[str] | None, project: Path) -> Preparation:
        """Start making `path` (or find it made). Call from the thread that lives as long as the
        preparation should: the command gets SIGTERM when that thread ends.

        Raises:
            Conflict: another preparation of this path is under way.
            TrainguardError: the path is missing and has no prepare command.
        """
        if path.exists():
            job = cls(exp_id, name, path, None)
            job.result = PreparedPath(param=name, path=str(path), action="exists")
            return job
        if argv is None:
            raise TrainguardError(
                f"{name}={path} does not exist and the trainer spec gives no command to create it; "
                "create it yourself or override it with an existing path."
            )
        logs = paths.runs_root(project) / ".prepare"
        logs.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        lock = safefiles.open_append(logs / f"{key}.lock")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Conflict(
                f"{name} ({path}) is being prepared by another call; wait for it to finish, then call "
                "prepare_data again (it never touches data that exists)."
            ) from None
        job = cls(exp_id, name, path, lock)
        if path.exists():  # made by the preparation that held the lock until just now
            job.result = PreparedPath(param=name, path=str(path), action="exists")
            return job
        job.argv = argv
        job.log = logs / f"{exp_id}-{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
        token = f"prepare-{key}-{os.getpid()}"
        try:
            with safefiles.open_append(job.log) as fh:
                job.proc = subprocess.Popen(
                    procs.leashed(argv),
                    cwd=project,
                    env=procs.child_env({}) | {procs.RUN_ID_VAR: token},
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=fh,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(lock.fileno(),),  # the lock is held while the command lives, whatever happens here
                )
        except BaseException:
            job.close()
            raise
        job.group = procs.RunProcesses(token, job.proc.pid, procs.start_time(job.proc.pid))
        return job

    def finish(self, code: int) -> PreparedPath:
        """Record how the command ended.

        Raises:
            TrainguardError: it failed, or did not make the path (with the end of its log).
        """
        assert self.log is not None
        self.stop_rest()
        if code != 0 or not self.path.exists():
            raise TrainguardError(
                f"preparing {self.name} failed (exit code {code}); end of {self.log}:\n{tail(self.log)}"
            )
        self.result = PreparedPath(
            param=self.name,
            path=str(self.path),
            action="created",
            argv=self.argv,
            seconds=round(time.monotonic() - self.started, 1),
            log=str(self.log),
        )
        return self.result

    def stop_rest(self, grace_s: float = 2.0) -> None:
        """End whatever of the command's group is still alive (its children included)."""
        if self.group is not None:
            self.group.stop(grace_s)

    def cancel(self) -> None:
        """Stop the command and its children (SIGTERM, then SIGKILL), and reap it."""
        if self.proc is not None:
            self.stop_rest(grace_s=5.0)
            self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cancel()
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def __enter__(self) -> Preparation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
