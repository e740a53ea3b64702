"""What every GPU backend reports, and what the monitoring tools return: the shared models.

Unknown figures are None with the reason in `unavailable`, never a made-up 0.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel


class GpuProcess(BaseModel):
    pid: int  # as the driver reports it: a host pid when this server runs in a container
    used_memory_bytes: int | None
    name: str | None
    user: str | None = None
    command: str | None = None  # its command line, cut to 160 characters
    run_id: str | None = None  # set when the process belongs to one of our runs
    matched_by: Literal["pid", "memory"] | None = None  # how run_id was found (memory: in a container)


class Clocks(BaseModel):
    """Current and maximum clocks in MHz, and why the GPU runs below its maximum (if it does)."""

    graphics_mhz: int | None
    sm_mhz: int | None
    memory_mhz: int | None
    max_graphics_mhz: int | None
    max_memory_mhz: int | None
    throttle_reasons: list[str] | None  # [] = running free; None = the driver does not say


class Ecc(BaseModel):
    """ECC state and error counts since the driver loaded (volatile) and over the card's life."""

    enabled: bool
    corrected_volatile: int | None
    uncorrected_volatile: int | None
    uncorrected_aggregate: int | None


class MigDevice(BaseModel):
    """A MIG slice of an NVIDIA GPU: what a process sees when CUDA_VISIBLE_DEVICES names its UUID."""

    index: int
    uuid: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    processes: list[GpuProcess]


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
    pci_bus_id: str | None = None
    gfx: str | None = None  # AMD architecture (pre-flight's HSA_OVERRIDE_GFX_VERSION check needs it)
    clocks: Clocks | None = None
    ecc: Ecc | None = None  # None: the card has no ECC (or the driver does not say: see unavailable)
    mig: list[MigDevice] | None = None  # None: MIG off or unsupported


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
    held: list[HeldMemory] = []  # zombie memory, with the fix (the Sampler fills it)
    pid_namespace: Literal["host", "container"] = "host"  # container: driver pids are host pids


class HeldMemory(BaseModel):
    """GPU memory held by a process that is gone or by one of our finished runs, with the fix."""

    gpu: int
    pid: int | None
    bytes: int | None
    why: str
    fix: str


class Stat(BaseModel):
    min: float
    mean: float
    max: float
    samples: int


class DeviceWatch(BaseModel):
    index: int
    name: str | None
    metrics: dict[str, Stat]  # memory_used_bytes, utilization_percent, temperature_c, power_w


class GpuWatch(BaseModel):
    """`gpu_watch`: `nvidia-smi -l 1` made fit for an agent's context: min / mean / max per metric."""

    backend: str
    seconds: float
    interval: float
    samples: int
    devices: list[DeviceWatch]
    runs: dict[str, Stat]  # run_id -> its processes' GPU memory in bytes
    note: str


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


GpuReport.model_rebuild()
