"""The local backend: a supervisor process beside the server owns the run (mcp_server.supervisor).

The supervisor starts in a session of its own, so the run outlives the server; the trainer is
leashed to the supervisor. A status check that finds the supervisor dead stops what is left of
the run and records it `lost` (`refresh`).
"""

from __future__ import annotations

import errno
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from mcp_server import ledger, paths, procs, scratchpad, textlog
from mcp_server.backends.model import Resources
from mcp_server.checks import Check
from mcp_server.errors import TrainguardError
from mcp_server.rundir import TERMINAL, RunDir, RunState
from mcp_server.safefiles import disk_full
from mcp_server.specs import TrainerSpec

log = logging.getLogger("trainguard.backends.local")
START_TIMEOUT_S = 20.0


class LocalBackend:
    name = "local"

    def check(self, resources: Resources, spec: TrainerSpec, config: dict[str, Any], gpus: int) -> list[Check]:
        if resources.nproc > 1:
            return [
                Check(
                    name="backend",
                    verdict="fail",
                    detail=f"the local backend runs one process; {resources.nproc} were asked for.",
                    fix="Pass backend='torchrun' for several processes, or resources={'nproc': 1}.",
                )
            ]
        return []

    def trainer_argv(self, argv: list[str], resources: Resources, run: RunDir) -> list[str]:
        return list(argv)

    def log_files(self, run: RunDir) -> dict[str, Path]:
        return {}

    def start(self, run: RunDir) -> RunState:
        return _wait_started(run, _start_supervisor(run))

    def refresh(self, run: RunDir, state: RunState) -> RunState:
        """A run whose supervisor is gone is never forgotten: while any of its processes lives it
        has SIGTERM (from the leash on Linux, else from here: it checkpoints; its slot stays taken
        until it exits), then SIGKILL after the stop grace; once none is left it is `lost`, with a
        finish entry in the scratchpad and a row in the experiment's results.md."""
        if state.status in TERMINAL or procs.is_alive(state.supervisor_pid, state.supervisor_started):
            return state
        if (
            state.status == "starting"
            and state.supervisor_pid is None
            and time.time() - state.updated_at < START_TIMEOUT_S
        ):
            return state  # the supervisor is still coming up
        with run.lock():
            state = run.read_state()  # it may have finished, or another caller recorded it, meanwhile
            if state.status in TERMINAL or procs.is_alive(state.supervisor_pid, state.supervisor_started):
                return state
            orphans = processes(run, state)
            if orphans.members():
                now = time.time()
                if state.orphaned_at is None:
                    state.orphaned_at = now
                    if not procs.LEASH_ARMED:  # on Linux the leash sent it already: a second one means "now"
                        orphans.signal(signal.SIGTERM)
                    run.write_state(state)
                elif now - state.orphaned_at > run.read_manifest().watchdog.stop_grace_s:
                    orphans.signal(signal.SIGKILL)
                return state
            state.status = "lost"
            state.failure = "the supervisor ended without recording how the trainer ended" + (
                "; its trainer was stopped with it (SIGTERM: it saves a checkpoint)"
                if state.pid is not None
                else "; its trainer had not started"
            )
            state.finished_at = time.time()
            run.write_state(state)
            _scratchpad_lost(run, state)
            ledger.record_lost(run, state)
        return state

    def stop(self, run: RunDir, state: RunState, grace_s: float) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while state.pgid is None and state.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.05)  # still starting, or queued: the supervisor sees the stop marker
            state = self.refresh(run, run.read_state())
        if state.pgid is None or state.status in TERMINAL:
            return "none"
        return processes(run, state).stop(grace_s)

    def processes_left(self, run: RunDir, state: RunState) -> int:
        return len(processes(run, state).members())


def processes(run: RunDir, state: RunState) -> procs.RunProcesses:
    """The run's processes, each verified as the run's before it is signalled."""
    return procs.RunProcesses(run.run_id, state.pid, state.pid_started, str(run.path))


def _start_supervisor(run: RunDir) -> subprocess.Popen:
    return procs.start_detached(
        "mcp_server.supervisor", run.path, run.supervisor_log, paths.PLUGIN_ROOT, paths.SOURCE_TREE
    )


def _wait_started(run: RunDir, proc: subprocess.Popen) -> RunState:
    """The state once the supervisor has queued or started the trainer.

    Raises:
        TrainguardError: if the supervisor ended first or did not get that far in time (its
            process is then killed; the caller removes the folder).
        OSError: ENOSPC when the supervisor found the disk full before the trainer started.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        state = run.read_state()
        if state.status == "failed" and state.pid is None and (state.failure or "").startswith("disk full"):
            raise OSError(errno.ENOSPC, state.failure)
        if state.status != "starting":
            return state
        if proc.poll() is not None:
            state = run.read_state()
            if state.status != "starting":
                continue
            full = disk_full(run.path)
            if full:
                raise OSError(errno.ENOSPC, full)
            raise TrainguardError(
                f"the run's supervisor exited before starting the trainer: "
                f"{textlog.tail(run.supervisor_log, lines=3, max_chars=500) or 'no output'}"
            )
        if time.monotonic() >= deadline:
            proc.kill()  # our own child: nothing else can hold its pid while it is unreaped
            raise TrainguardError(
                f"the run's supervisor did not start the trainer within {START_TIMEOUT_S:.0f} s "
                "(the machine may be overloaded); nothing launched. Try again."
            )
        time.sleep(0.05)


def _scratchpad_lost(run: RunDir, state: RunState) -> None:
    try:
        manifest = run.read_manifest()
        scratchpad.append(
            Path(manifest.project_dir),
            manifest.agent,
            f"run {run.run_id} lost ({state.failure}); resume_run continues it from its last checkpoint",
            kind="finish",
        )
    except (OSError, TrainguardError) as exc:
        log.warning("scratchpad not written for %s: %s", run.run_id, exc)


LOCAL = LocalBackend()
