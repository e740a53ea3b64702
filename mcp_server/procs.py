"""Process identity and the one routine that stops a process group.

A pid alone is not an identity: pids are reused. A process is ours only if its pid *and*
its start time match what was recorded when we started it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import psutil

from mcp_server.errors import InvalidInput

POLL_S = 0.05
# What a trainer may inherit from the server's environment: locale, paths and accelerator
# settings, never tokens or keys.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH",
})
ENV_ALLOW_PREFIXES = ("LC_", "CUDA_", "HIP_", "ROCR_", "HSA_", "ROCM_", "PYTORCH_", "TORCH_", "NCCL_", "OMP_", "MKL_")
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a trainer or data-preparation process: the allow-listed part of
    ours, plus `extra` (from a trainer spec), with Python's output unbuffered.

    Raises:
        InvalidInput: if an extra variable's name or value is malformed.
    """
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)}
    for key, value in extra.items():
        if not ENV_NAME_RE.match(key) or "\x00" in value:
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
    """Pids of the live (non-zombie) processes in process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Poll until no live process is left in the group; True if it emptied in time."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def stop_group(pgid: int, grace_s: float) -> str:
    """SIGTERM the whole group, wait up to `grace_s`, then SIGKILL whatever is left.

    Returns:
        "gone" if nothing was running, "terminated" if SIGTERM sufficed, "killed" otherwise.
    """
    if not _signal_group(pgid, signal.SIGTERM):
        return "gone"
    if wait_group_gone(pgid, grace_s):
        return "terminated"
    _signal_group(pgid, signal.SIGKILL)
    wait_group_gone(pgid, 5.0)
    return "killed"
