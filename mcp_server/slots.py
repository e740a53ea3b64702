"""One GPU, one job: run slots and the FIFO queue in front of them.

A run needs a slot of its resource (`gpu` or `cpu`) before its trainer starts. A slot is an
exclusive `flock` on `runs/.slots/<resource>-<i>.lock`, taken by the run's supervisor and
inherited by the trainer (the same open file, passed down), so the kernel holds it while either
of them lives and releases it when both have exited, however they exit: no stale locks, a
trainer that outlives a killed supervisor still holds its slot, and two launches racing for one
GPU can never both hold it. A run of N processes (torchrun) takes N slots at once or none.
Runs waiting for a slot are `queued`; only the oldest queued run of a resource may take free
slots (FIFO). A GPU run sees only its slots' GPUs (`device_env`).
The counts: one per visible GPU (`TRAINGUARD_GPU_SLOTS` overrides), CPU runs as many as the
cores allow (`TRAINGUARD_CPU_SLOTS`, default the core count).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from mcp_server import procs, safefiles
from mcp_server.errors import InvalidInput
from mcp_server.rundir import RunState, all_runs


def slot_count(resource: str, gpus: int) -> int:
    """How many runs of `resource` may run at once."""
    var = "TRAINGUARD_GPU_SLOTS" if resource == "gpu" else "TRAINGUARD_CPU_SLOTS"
    default = max(1, gpus) if resource == "gpu" else max(1, os.cpu_count() or 1)
    try:
        return max(1, int(os.environ.get(var, default)))
    except ValueError:
        return default


def try_acquire(runs_root: Path, resource: str, count: int, needed: int = 1) -> list[tuple[int, IO[bytes]]] | None:
    """`needed` open, exclusively locked slot files with their indices, or None when fewer are
    free: all at once or none, so two runs of 2 on 3 slots never hold one each and wait for
    each other. Keep them open."""
    folder = runs_root / ".slots"
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        raise safefiles.NotRegular(f"{folder} is a symbolic link; remove it (trainguard recreates it).")
    held: list[tuple[int, IO[bytes]]] = []
    for i in range(count):
        fh = safefiles.open_append(folder / f"{resource}-{i}.lock")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        held.append((i, fh))
        if len(held) == needed:
            return held
    for _, fh in held:  # closing the file releases its lock
        fh.close()
    return None


def device_env(indices: list[int], base: dict[str, str]) -> dict[str, str]:
    """The variables that show a GPU run only the GPUs of its slots. Slot i is the i-th GPU the
    server sees: of `CUDA_VISIBLE_DEVICES` when that is set, else in PCI bus order (the order
    of nvidia-smi and NVML, which `CUDA_DEVICE_ORDER=PCI_BUS_ID` gives CUDA too)."""
    env: dict[str, str] = {}
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        visible = [v.strip() for v in base[var].split(",") if v.strip()] if base.get(var) else None
        chosen = [visible[i] for i in indices if i < len(visible)] if visible else [str(i) for i in indices]
        env[var] = ",".join(chosen)
    env.setdefault("CUDA_DEVICE_ORDER", base.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"))
    return env


def queued_before(runs_root: Path, run_id: str, resource: str, queued_at: float) -> list[str]:
    """Runs of the same resource queued earlier than this one and still waiting, oldest first."""
    ahead = []
    for run in all_runs(runs_root):
        if run.run_id == run_id:
            continue
        try:
            state: RunState = run.read_state()
        except (OSError, InvalidInput):  # a damaged run: not in the queue
            continue
        if (
            state.status == "queued"
            and state.resource == resource
            and state.queued_at is not None
            and (state.queued_at, run.run_id) < (queued_at, run_id)
            and procs.is_alive(state.supervisor_pid, state.supervisor_started)
        ):
            ahead.append((state.queued_at, run.run_id))
    return [rid for _, rid in sorted(ahead)]
