"""Process identity and the one routine that stops a process group.

A pid alone is not an identity: pids are reused. A process is ours only if its pid *and*
its start time match what was recorded when we started it.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

POLL_S = 0.05


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
