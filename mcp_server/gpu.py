"""GPUs and the host, behind one small backend protocol; monitoring never raises.

Backends: NVML (through `nvidia-ml-py`, imported lazily) and none. Every driver call goes
through `_query`, so one unsupported metric becomes None with a reason, never an exception
and never a made-up 0. AMD support lands behind the same protocol (issue 6).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import psutil
from pydantic import BaseModel

log = logging.getLogger("trainguard.gpu")


class GpuProcess(BaseModel):
    pid: int
    used_memory_bytes: int | None
    name: str | None


class GpuDevice(BaseModel):
    """One GPU as its driver reports it; unknown figures are None."""

    index: int
    vendor: str
    name: str | None
    uuid: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_percent: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None
    processes: list[GpuProcess]
    unavailable: dict[str, str]


class HostStatus(BaseModel):
    cpu_count: int | None
    cpu_percent: float
    load_avg_1m: float
    ram_used_bytes: int
    ram_total_bytes: int


class GpuReport(BaseModel):
    """What `gpu_status` returns: the devices (maybe none, with why) and the host."""

    backend: str
    devices: list[GpuDevice]
    note: str
    host: HostStatus


class GpuBackend(Protocol):
    name: str

    def devices(self) -> list[GpuDevice]: ...


class NoGpu:
    """The backend when no driver answers: no devices, and a note that says why."""

    name = "none"

    def __init__(self, why: str):
        self.why = why

    def devices(self) -> list[GpuDevice]:
        return []


class NvmlBackend:
    """NVIDIA GPUs through NVML. Construct with `NvmlBackend.open()`."""

    name = "nvml"

    def __init__(self, nvml: Any):
        self._nvml = nvml

    @classmethod
    def open(cls) -> NvmlBackend | NoGpu:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError as exc:
            return NoGpu(f"nvidia-ml-py is not installed ({exc}); pip install nvidia-ml-py")
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLLibraryMismatchError is not an NVMLError
            return NoGpu(f"no NVIDIA driver answered ({type(exc).__name__}: {exc})")
        return cls(pynvml)

    def _query(self, unavailable: dict[str, str], key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - any driver failure is one unknown metric
            unavailable[key] = f"{type(exc).__name__}: {exc}"
            return None

    def devices(self) -> list[GpuDevice]:
        nv = self._nvml
        out: list[GpuDevice] = []
        count = self._query({}, "count", nv.nvmlDeviceGetCount) or 0
        for i in range(count):
            miss: dict[str, str] = {}
            h = self._query(miss, "handle", nv.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            mem = self._query(miss, "memory", nv.nvmlDeviceGetMemoryInfo, h)
            util = self._query(miss, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
            power = self._query(miss, "power", nv.nvmlDeviceGetPowerUsage, h)
            limit = self._query(miss, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
            procs = self._query(miss, "processes", nv.nvmlDeviceGetComputeRunningProcesses, h) or []
            out.append(
                GpuDevice(
                    index=i,
                    vendor="nvidia",
                    name=self._query(miss, "name", nv.nvmlDeviceGetName, h),
                    uuid=self._query(miss, "uuid", nv.nvmlDeviceGetUUID, h),
                    memory_used_bytes=mem.used if mem else None,
                    memory_total_bytes=mem.total if mem else None,
                    utilization_percent=util.gpu if util else None,
                    temperature_c=self._query(
                        miss, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
                    ),
                    power_w=power / 1000 if power is not None else None,
                    power_limit_w=limit / 1000 if limit is not None else None,
                    processes=[_gpu_process(p) for p in procs],
                    unavailable=miss,
                )
            )
        return out


def _gpu_process(p: Any) -> GpuProcess:
    try:
        name = psutil.Process(p.pid).name()
    except psutil.Error:
        name = None  # NVML reports host pids; in a container they may not be visible here
    used = getattr(p, "usedGpuMemory", None)
    return GpuProcess(pid=p.pid, used_memory_bytes=used if isinstance(used, int) else None, name=name)


def host_status() -> HostStatus:
    """CPU, load and RAM of this machine."""
    vm = psutil.virtual_memory()
    return HostStatus(
        cpu_count=os.cpu_count(),
        cpu_percent=psutil.cpu_percent(interval=0.1),
        load_avg_1m=os.getloadavg()[0],
        ram_used_bytes=vm.total - vm.available,
        ram_total_bytes=vm.total,
    )


def open_backend() -> GpuBackend:
    """The first backend whose driver answers, else `NoGpu` with the reason."""
    return NvmlBackend.open()


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


# ---------------------------------------------------------------------------- AMD architecture
# The kernel's KFD topology lists every compute node; a GPU node's gfx_target_version encodes
# its architecture as major*10000 + minor*100 + stepping (110001 -> gfx1101, 90010 -> gfx90a).
# It needs no ROCm userspace, so pre-flight can read it even where amdsmi is missing.
KFD_TOPOLOGY = Path("/sys/class/kfd/kfd/topology/nodes")


class AmdNode(BaseModel):
    node: int
    gfx: str
    device_id: int | None


def gfx_name(target_version: int) -> str:
    """110001 -> 'gfx1101', 90010 -> 'gfx90a', 100300 -> 'gfx1030'."""
    major, minor, stepping = target_version // 10000, target_version // 100 % 100, target_version % 100
    return f"gfx{major}{minor}{stepping:x}"


def amd_gfx_targets(topology: Path | None = None) -> list[AmdNode]:
    """The AMD GPUs' architectures from the KFD topology; empty without the amdgpu driver."""
    root = topology or KFD_TOPOLOGY
    nodes = []
    try:
        folders = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        return []
    for folder in folders:
        try:
            lines = (folder / "properties").read_text().splitlines()
            props = dict(line.split(None, 1) for line in lines if " " in line)
            version = int(props.get("gfx_target_version", "0"))
        except (OSError, ValueError):
            continue
        if version:  # CPU nodes have 0
            device = props.get("device_id")
            nodes.append(AmdNode(node=int(folder.name), gfx=gfx_name(version),
                                 device_id=int(device) if device and device.strip().isdigit() else None))
    return nodes
