"""Sampling the GPUs: which backend answers, snapshots with the host's figures, watching over
time, which GPU a run sees, and memory nobody uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from mcp_server.curves import records
from mcp_server.errors import TrainguardError
from mcp_server.gpu.amd import AmdSmiBackend, AmdSmiCliBackend, AmdSysfsBackend
from mcp_server.gpu.model import (
    DeviceWatch,
    GpuBackend,
    GpuDevice,
    GpuProcess,
    GpuReport,
    GpuWatch,
    HeldMemory,
    HostStatus,
    NoGpu,
    Stat,
)
from mcp_server.gpu.nvml import NvmlBackend
from mcp_server.rundir import TERMINAL, all_runs, run_pids
from mcp_server.textlog import read_tail

_cpu_primed: list[float] = []


def _cpu_percent() -> float:
    """CPU use since the previous call, without blocking; the first call measures 50 ms."""
    if not _cpu_primed:
        _cpu_primed.append(time.monotonic())
        return psutil.cpu_percent(interval=0.05)
    return psutil.cpu_percent(interval=None)


def host_status() -> HostStatus:
    """CPU, load and RAM of this machine."""
    vm = psutil.virtual_memory()
    return HostStatus(
        cpu_count=os.cpu_count(),
        cpu_percent=_cpu_percent(),
        load_avg_1m=os.getloadavg()[0],
        ram_used_bytes=vm.total - vm.available,
        ram_total_bytes=vm.total,
    )


def open_backend() -> GpuBackend:
    """The first backend whose driver answers: NVML, amdsmi, the amd-smi CLI, amdgpu's sysfs;
    else `NoGpu` with every reason."""
    reasons = []
    for opener in (NvmlBackend.open, AmdSmiBackend.open, AmdSmiCliBackend.open, AmdSysfsBackend.open):
        backend = opener()
        if not isinstance(backend, NoGpu):
            return backend
        reasons.append(backend.why)
    return NoGpu("; ".join(reasons))


def gpu_report(backend: GpuBackend | None = None) -> GpuReport:
    """Snapshot of every GPU and the host."""
    backend = backend or open_backend()
    devices = backend.devices()
    if devices:
        note = f"{len(devices)} GPU(s) through {backend.name}"
    elif isinstance(backend, NoGpu):
        note = f"No GPU found: {backend.why}. Training runs on the CPU."
    else:
        note = f"The {backend.name} driver answered but lists no GPU. Training runs on the CPU."
    return GpuReport(backend=backend.name, devices=devices, note=note, host=host_status())


WATCHED = ("memory_used_bytes", "utilization_percent", "temperature_c", "power_w")


def summarize_samples(reports: list[GpuReport], seconds: float, interval: float) -> GpuWatch:
    """Aggregate snapshots per device and metric, and per run from its processes' memory (the
    processes the Sampler attributed to a run)."""
    per_device: dict[int, dict[str, list[float]]] = {}
    names: dict[int, str | None] = {}
    per_run: dict[str, list[float]] = {}
    for report in reports:
        run_memory: dict[str, float] = {}
        for d in report.devices:
            names[d.index] = d.name
            bucket = per_device.setdefault(d.index, {})
            for key in WATCHED:
                value = getattr(d, key)
                if value is not None:
                    bucket.setdefault(key, []).append(float(value))
            for p in d.processes:
                if p.run_id and p.used_memory_bytes is not None:
                    run_memory[p.run_id] = run_memory.get(p.run_id, 0.0) + p.used_memory_bytes
        for run_id, used in run_memory.items():
            per_run.setdefault(run_id, []).append(used)

    def stat(values: list[float]) -> Stat:
        return Stat(min=min(values), mean=round(sum(values) / len(values), 3), max=max(values), samples=len(values))

    devices = [
        DeviceWatch(index=i, name=names[i], metrics={k: stat(v) for k, v in m.items()})
        for i, m in sorted(per_device.items())
    ]
    backend = reports[0].backend if reports else "none"
    note = reports[-1].note if reports else "no sample taken"
    return GpuWatch(
        backend=backend,
        seconds=seconds,
        interval=interval,
        samples=len(reports),
        devices=devices,
        runs={r: stat(v) for r, v in per_run.items()},
        note=note,
    )


WATCH_S = 300.0  # gpu_watch's longest watch
INTERVAL_S = (0.2, 60.0)  # its sampling interval, least and most
WatchProgress = Callable[[int, float], Awaitable[None]]  # samples taken, seconds elapsed


async def watch(sampler: Sampler, seconds: float, interval: float, progress: WatchProgress | None = None) -> GpuWatch:
    """Sample every `interval` seconds for `seconds` (one sample at least), then aggregate
    (`summarize_samples`). `progress` hears each sample but the last. Samples are taken in a
    worker thread, so the event loop keeps serving while a slow backend answers."""
    import anyio  # here, not at the top: the supervisor and the watchdog import this module and never watch
    import anyio.to_thread

    reports: list[GpuReport] = []
    t0 = time.monotonic()
    while True:
        reports.append(await anyio.to_thread.run_sync(sampler.sample))
        elapsed = time.monotonic() - t0
        if elapsed + interval > seconds:
            break
        if progress is not None:
            await progress(len(reports), elapsed)
        await anyio.sleep(interval)
    return summarize_samples(reports, round(time.monotonic() - t0, 1), interval)


# ---------------------------------------------------------------------------- which GPU a run sees

VISIBLE_VARS = {
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
    "amd": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"),
}


def visible_devices(devices: list[GpuDevice], env: dict[str, str]) -> list[GpuDevice]:
    """The devices a process with `env` sees, in its own order (its cuda:0 first).

    `CUDA_VISIBLE_DEVICES` (NVIDIA; ROCm honours it too) and `HIP_VISIBLE_DEVICES` /
    `ROCR_VISIBLE_DEVICES` (AMD) hold indices or UUIDs, comma-separated; an entry that names
    no device ends the list, as the runtimes do. Unset means all of them.
    """
    if not devices:
        return []
    names = VISIBLE_VARS.get(devices[0].vendor, ("CUDA_VISIBLE_DEVICES",))
    spec = next((env[v] for v in names if v in env), None)
    if spec is None:
        return list(devices)
    out = []
    for item in (x.strip() for x in spec.split(",")):
        match = next(
            (
                d
                for d in devices
                if (item.isdigit() and d.index == int(item))
                or (item and d.uuid and (d.uuid == item or d.uuid.startswith(item)))
            ),
            None,
        )
        match = match or _mig_slice(devices, item)
        if match is None:
            break
        out.append(match)
    return out


def uuid_key(uuid: str | None) -> str | None:
    """A device UUID reduced to its hex digits, so that the spellings of one device compare equal:
    NVML's "GPU-5d3f0e2c-1a7b-...", torch's "5d3f0e2c-1a7b-..." (no prefix), MIG's "MIG-..."."""
    if not uuid:
        return None
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text.replace("-", "") or None


def device_by_uuid(devices: list[GpuDevice], uuid: str | None) -> GpuDevice | None:
    """The device (or MIG slice, as the device a process on it sees) whose UUID is `uuid`."""
    want = uuid_key(uuid)
    if want is None:
        return None
    for d in devices:
        if uuid_key(d.uuid) == want:
            return d
        for m in d.mig or []:
            if uuid_key(m.uuid) == want:
                return _mig_slice([d], m.uuid or "")
    return None


def run_device(
    devices: list[GpuDevice], env: dict[str, str], ordinal: int = 0, torch_uuids: list[str | None] | None = None
) -> tuple[GpuDevice | None, bool]:
    """The device a process with `env` uses as cuda:`ordinal`, and whether that is a guess.

    By UUID when torch, probed under the same device variables, named its device `ordinal`
    (`torch_uuids`, the torch probe's "uuids"): CUDA numbers devices fastest first unless
    `CUDA_DEVICE_ORDER=PCI_BUS_ID`, and NVML in PCI bus order, so an index alone can name
    another card. Without a UUID, by the variables over NVML's order: right in PCI bus order,
    and for cards of one model (CUDA breaks ties by bus id); a guess otherwise.
    """
    uuids = torch_uuids or []
    if 0 <= ordinal < len(uuids):
        found = device_by_uuid(devices, uuids[ordinal])
        if found is not None:
            return found, False
    visible = visible_devices(devices, env)
    if not 0 <= ordinal < len(visible):
        return None, False
    pci_order = env.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID" or visible[0].vendor != "nvidia"
    return visible[ordinal], not pci_order and len({d.name for d in visible}) > 1


def _mig_slice(devices: list[GpuDevice], uuid: str) -> GpuDevice | None:
    """A MIG slice named by its UUID, as the device a process on it sees (its own memory)."""
    for d in devices:
        for m in d.mig or []:
            if uuid and m.uuid and (m.uuid == uuid or m.uuid.startswith(uuid)):
                return d.model_copy(
                    update={
                        "name": f"{d.name} MIG slice {m.index}",
                        "uuid": m.uuid,
                        "memory_used_bytes": m.memory_used_bytes,
                        "memory_total_bytes": m.memory_total_bytes,
                        "processes": m.processes,
                        "mig": None,
                    }
                )
    return None


def held_memory(report: GpuReport, finished_pids: dict[int, str]) -> list[HeldMemory]:
    """Zombie memory: a listed process that no longer exists, or a pid of one of our finished runs."""
    out = []
    for d in report.devices:
        for p in d.processes:
            if p.pid in finished_pids:
                out.append(
                    HeldMemory(
                        gpu=d.index,
                        pid=p.pid,
                        bytes=p.used_memory_bytes,
                        why=f"pid {p.pid} of our finished run {finished_pids[p.pid]} still holds it",
                        fix=f"kill {p.pid} (a data-loader worker or child that outlived the run)",
                    )
                )
            elif not psutil.pid_exists(p.pid) and p.name is None:
                out.append(
                    HeldMemory(
                        gpu=d.index,
                        pid=p.pid,
                        bytes=p.used_memory_bytes,
                        why=f"pid {p.pid} is listed by the driver but no such process is visible "
                        "(gone, or in another container's pid namespace)",
                        fix="The driver usually frees it within seconds. If it stays and no "
                        "container shares this GPU, end what still uses it or reboot "
                        "(nvidia-smi --gpu-reset works only on an idle GPU).",
                    )
                )
    return out


# ---------------------------------------------------------------------------- the one sampler

REOPEN_S = 60.0  # a backend that found no GPU is asked again after this long (a driver may load)
MEMORY_MATCH_BELOW = 64 * 2**20  # a process may use a little less than its run reports reserved...
MEMORY_MATCH_ABOVE = 2 * 2**30  # ...and up to its CUDA/HIP context (0.3-1 GiB) plus slack more


def pid_namespace_is_nested(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process runs in a child pid namespace (a container). The GPU driver then
    reports host pids, which mean nothing here: psutil would find the wrong process or none."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("NSpid:"):
                return len(line.split()) > 2  # "NSpid: 1234" on the host, "NSpid: 98765 12" inside
    except OSError:
        pass
    return False


class Sampler:
    """The one way to sample the GPUs: `gpu_status`, `gpu_watch`, pre-flight and the watchdog all
    use it. It opens the backend once, and to the driver's figures adds what only this host
    knows: each process's name, user and command line, the run it belongs to, and memory held
    by nobody. In a container the driver's pids are host pids, so runs are matched by their
    own reported GPU memory (trainkit writes a `device_memory` event) instead of by pid.
    """

    def __init__(
        self, runs_root: Path | None = None, backend: GpuBackend | None = None, nested_pid_namespace: bool | None = None
    ):
        self.runs_root = runs_root
        self._backend = backend
        self._opened_at = time.monotonic() if backend is not None else 0.0
        self.nested = pid_namespace_is_nested() if nested_pid_namespace is None else nested_pid_namespace

    @property
    def backend(self) -> GpuBackend:
        stale = isinstance(self._backend, NoGpu) and time.monotonic() - self._opened_at > REOPEN_S
        if self._backend is None or stale:
            self._backend, self._opened_at = open_backend(), time.monotonic()
        return self._backend

    def sample(self) -> GpuReport:
        """A snapshot of every GPU and the host, with processes named and attributed to runs."""
        report = gpu_report(self.backend)
        processes = [p for d in report.devices for p in _all_processes(d)]
        if self.nested:
            report.pid_namespace = "container"
            report.note += (
                ". This server runs in a container's pid namespace, so the driver's pids are host "
                "pids: runs are matched to GPU processes by their own reported memory"
            )
        else:
            for p in processes:
                _describe(p)
        if self.runs_root is not None and processes:
            self._attribute(report, processes)
        return report

    def _attribute(self, report: GpuReport, processes: list[GpuProcess]) -> None:
        if not self.nested:
            active, finished = run_pids(self.runs_root)
            for p in processes:
                if p.pid in active:
                    p.run_id, p.matched_by = active[p.pid], "pid"
            report.held = held_memory(report, finished)
            return
        _match_by_memory(processes, run_memory_figures(self.runs_root))


def _all_processes(d: GpuDevice) -> list[GpuProcess]:
    return list(d.processes) + [p for m in d.mig or [] for p in m.processes]


def _describe(p: GpuProcess) -> None:
    """Fill name, user and command line from this host's process table (never raises)."""
    try:
        proc = psutil.Process(p.pid)
        with proc.oneshot():
            p.name = p.name or proc.name()
            p.user = proc.username()
            p.command = " ".join(" ".join(proc.cmdline()).split())[:160] or None
    except psutil.Error:
        pass  # gone, or not ours to read: held_memory says which


def run_memory_figures(runs_root: Path) -> dict[str, int]:
    """run id -> the GPU memory its trainer last reported reserved, for each active run."""
    out = {}
    for run in all_runs(runs_root):
        try:
            if run.read_state().status in TERMINAL:
                continue
            tail = read_tail(run.metrics, 64 * 1024)
        except (OSError, TrainguardError):  # a damaged run: list_runs shows it, here it is skipped
            continue
        record = records.last_record(tail.encode(), b'"device_memory"')
        reserved = record.get("reserved_bytes") if record else None
        if isinstance(reserved, int) and reserved > 0:
            out[run.run_id] = reserved
    return out


def _match_by_memory(processes: list[GpuProcess], figures: dict[str, int]) -> None:
    """Give each run the unclaimed process whose driver-reported memory is closest above its own
    figure (the driver also counts the context the allocator does not), within the margins."""
    for run_id, reserved in sorted(figures.items(), key=lambda kv: -kv[1]):
        fits = [
            p
            for p in processes
            if p.run_id is None
            and p.used_memory_bytes is not None
            and -MEMORY_MATCH_BELOW <= p.used_memory_bytes - reserved <= MEMORY_MATCH_ABOVE
        ]
        if fits:
            best = min(fits, key=lambda p: abs(p.used_memory_bytes - reserved))
            best.run_id, best.matched_by = run_id, "memory"


_shared: dict[Path | None, Sampler] = {}


def shared_sampler(runs_root: Path | None = None) -> Sampler:
    """This process's sampler for a runs root: one backend per process (NVML's init costs
    milliseconds, the amdsmi probe up to seconds), shared by every tool call."""
    sampler = _shared.get(runs_root)
    if sampler is None:
        sampler = _shared[runs_root] = Sampler(runs_root)
    return sampler
