"""GPUs and the host, behind one small backend protocol; monitoring never raises.

model     the reports every backend fills (GpuDevice, GpuReport, ...) and the `GpuBackend` protocol
nvml      NVIDIA through NVML
amd       AMD through amdsmi (in a subprocess), the amd-smi CLI, amdgpu's sysfs; the KFD gfx ids
sampling  which backend answers, `Sampler` (the one sampler of gpu_status, gpu_watch, pre-flight
          and the watchdog), watching over time, which GPU a run sees (by UUID), zombie memory
"""

from mcp_server.gpu.amd import AmdNode, AmdSmiBackend, AmdSmiCliBackend, AmdSysfsBackend, amd_gfx_targets, gfx_name
from mcp_server.gpu.model import (
    Clocks,
    DeviceWatch,
    Ecc,
    GpuBackend,
    GpuDevice,
    GpuProcess,
    GpuReport,
    GpuWatch,
    HeldMemory,
    HostStatus,
    MigDevice,
    NoGpu,
    Stat,
)
from mcp_server.gpu.nvml import NvmlBackend
from mcp_server.gpu.sampling import (
    Sampler,
    device_by_uuid,
    gpu_report,
    held_memory,
    host_status,
    open_backend,
    pid_namespace_is_nested,
    run_device,
    shared_sampler,
    summarize_samples,
    uuid_key,
    visible_devices,
    watch,
)

__all__ = [
    "AmdNode",
    "AmdSmiBackend",
    "AmdSmiCliBackend",
    "AmdSysfsBackend",
    "Clocks",
    "DeviceWatch",
    "Ecc",
    "GpuBackend",
    "GpuDevice",
    "GpuProcess",
    "GpuReport",
    "GpuWatch",
    "HeldMemory",
    "HostStatus",
    "MigDevice",
    "NoGpu",
    "NvmlBackend",
    "Sampler",
    "Stat",
    "amd_gfx_targets",
    "device_by_uuid",
    "gfx_name",
    "gpu_report",
    "held_memory",
    "host_status",
    "open_backend",
    "pid_namespace_is_nested",
    "run_device",
    "shared_sampler",
    "summarize_samples",
    "uuid_key",
    "visible_devices",
    "watch",
]
