"""Process identity, the one routine that stops a run's processes, and the leash that ties a
child to its parent.

A pid alone is not an identity: pids are reused, and so are process-group ids. A process is
ours only if its pid *and* its start time match what was recorded when we started it, or, for
the trainer's children, if it carries the run's id in the environment it was started with
(`TRAINGUARD_RUN_ID`, which every trainer and its children inherit). A signal goes to a
process group only while its leader is verifiably the run's trainer; once the leader is gone,
only to the members verified one by one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from mcp_server import safefiles
from mcp_server.errors import InvalidInput

POLL_S = 0.05
# What a trainer may inherit from the server's environment: locale, paths and accelerator
# settings, never tokens or keys.
ENV_ALLOW = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
    }
)
ENV_ALLOW_PREFIXES = ("LC_", "CUDA_", "HIP_", "ROCR_", "HSA_", "ROCM_", "PYTORCH_", "TORCH_", "NCCL_", "OMP_", "MKL_")
ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
RUN_ID_VAR = "TRAINGUARD_RUN_ID"
RUN_DIR_VAR = "TRAINGUARD_RUN_DIR"
LEASH = Path(__file__).resolve().parent / "leash.py"
LEASH_ARMED = sys.platform.startswith("linux")  # the leash's death signal exists (prctl); elsewhere it only execs


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a trainer or data-preparation process: the allow-listed part of
    ours, plus `extra` (from a trainer spec), with Python's output unbuffered.

    Raises:
        InvalidInput: if an extra variable's name or value is malformed.
    """
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)}
    for key, value in extra.items():
        if not ENV_NAME_RE.fullmatch(key) or "\x00" in value:
            raise InvalidInput(f"environment variable {key!r} is malformed; fix the trainer spec's [env] table.")
        env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """True if `pid` runs, is not a zombie and started at `started` (so it was not reused)."""
    if pid is None or started is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group `pgid`, whoever they belong to."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@dataclass(frozen=True)
class RunProcesses:
    """A run's processes: its trainer `pid`, which leads a process group of its own, and every
    process started from it. Each is verified before any signal: the trainer by its start time and
    the run's id in the environment it was started with, the others by that id. A recorded pid
    (or a whole state file) naming another process therefore never gets it signalled."""

    run_id: str
    pid: int | None
    pid_started: float | None
    run_dir: str | None = None  # when given, a process must carry it too (run ids repeat across projects)

    def _carries_id(self, proc: psutil.Process) -> bool:
        try:
            env = proc.environ()
        except psutil.Error:  # another user's process, or gone: not verifiably ours
            return False
        return env.get(RUN_ID_VAR) == self.run_id and (self.run_dir is None or env.get(RUN_DIR_VAR) == self.run_dir)

    def leader_alive(self) -> bool:
        """The trainer itself runs, is the process recorded, and still leads its group."""
        if self.pid is None or not is_alive(self.pid, self.pid_started):
            return False
        try:
            return os.getpgid(self.pid) == self.pid and self._carries_id(psutil.Process(self.pid))
        except (ProcessLookupError, PermissionError, psutil.Error):
            return False

    def members(self) -> list[int]:
        """Pids of the run's live processes, each verified: every process of ours whose
        environment carries the run's id (the trainer, its group, and children that left it,
        such as torchrun's ranks, each in a session of its own), the recorded trainer only while
        it is the process that was started."""
        out = []
        for proc in psutil.process_iter(["status", "uids"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["uids"].real != os.getuid():
                    continue
                if proc.pid == self.pid and not is_alive(self.pid, self.pid_started):
                    continue
                if self._carries_id(proc):
                    out.append(proc.pid)
            except psutil.Error:
                continue
        return out

    def signal(self, sig: signal.Signals) -> bool:
        """Send `sig` to the run's processes; False if there was none. While the trainer leads
        its group, a polite signal goes to that group alone (a launcher such as torchrun forwards
        it to its ranks, and a second copy would mean "now" to them); SIGKILL also reaches every
        verified process outside it. Without the trainer, each verified process gets it."""
        if self.leader_alive():
            assert self.pid is not None
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return False
            if sig == signal.SIGKILL:
                for pid in self.members():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            return True
        sent = False
        for pid in self.members():
            try:
                os.kill(pid, sig)
                sent = True
            except ProcessLookupError:
                continue
        return sent

    def wait_gone(self, timeout_s: float) -> bool:
        """Poll until none of the run's processes is left; True if that happened in time."""
        deadline = time.monotonic() + timeout_s
        while self.members():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def stop(self, grace_s: float) -> str:
        """SIGTERM the run's processes, wait up to `grace_s`, then SIGKILL whatever is left.

        Returns:
            "gone" if nothing was running, "terminated" if SIGTERM sufficed, "killed" otherwise.
        """
        if not self.signal(signal.SIGTERM):
            return "gone"
        if self.wait_gone(grace_s):
            return "terminated"
        self.signal(signal.SIGKILL)
        self.wait_gone(5.0)
        return "killed"


def start_detached(
    module: str, target: Path, log_file: Path, plugin_root: Path, source_tree: bool, args: Sequence[str] = ()
) -> subprocess.Popen:
    """`python -m module target *args` in a session of its own (it outlives this process: a run's
    supervisor, a sweep's driver), stdin closed, output to `log_file` (opened without following a
    link), reaped by a thread when it exits so no zombie lingers while this process lives."""
    env = dict(os.environ)
    if source_tree:  # an installed wheel is on the interpreter's path already
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_root), env.get("PYTHONPATH")]))
    with safefiles.open_append(log_file) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(target), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=str(plugin_root),
            start_new_session=True,
            close_fds=True,
        )
    threading.Thread(target=proc.wait, name=f"reap-{target.name}", daemon=True).start()
    return proc


def leashed(argv: list[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """`argv` run through `leash.py`, so the child gets `sig` when the thread that started it
    dies (Linux's parent-death signal): a trainer never outlives its supervisor unobserved,
    a data preparation never outlives the server. The leash execs `argv` in place (same pid)."""
    return [sys.executable, "-I", str(LEASH), "--signal", str(int(sig)), "--parent", str(os.getpid()), "--", *argv]


def wait_unleashed(pid: int, timeout_s: float = 5.0) -> None:
    """Wait until a leashed child has exec'd its command (its command line no longer names the
    leash), so what is recorded and shown as running is the command itself."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            cmdline = psutil.Process(pid).cmdline()
        except psutil.Error:
            return  # gone, or not readable: nothing to wait for
        if str(LEASH) not in cmdline:
            return
        time.sleep(0.005)
