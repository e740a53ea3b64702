"""GPUs and the host, behind one small backend protocol; monitoring never raises.

Backends: NVML (through `nvidia-ml-py`, imported lazily) and none. Every driver call goes
through `_query`, so one unsupported metric becomes None with a reason, never an exception
and never a made-up 0. AMD support lands behind the same protocol (issue 6).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import psutil
from pydantic import BaseModel

log = logging.getLogger("trainguard.gpu")


class GpuProcess(BaseModel):
    pid: int
    used_memory_bytes: int | None
    name: str | None
    run_id: str | None = None  # set when the process belongs to one of our runs


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
    held: list[HeldMemory] = []  # zombie memory, with the fix (gpu_status fills it)


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


class AmdSysfsBackend:
    """AMD GPUs from the amdgpu driver's sysfs files: no ROCm userspace needed, nothing imported.

    Memory, utilisation, temperature and power come from `/sys/class/drm/card*/device/`; the
    architecture from the KFD topology. Processes are not listed here (amdsmi does that).
    """

    name = "amdgpu-sysfs"

    def __init__(self, cards: list[Path], topology: Path | None = None):
        self.cards = cards
        self.topology = topology

    @classmethod
    def open(cls, drm: Path | None = None, topology: Path | None = None) -> AmdSysfsBackend | NoGpu:
        root = drm or DRM_ROOT
        try:
            cards = sorted((p for p in root.iterdir() if re.fullmatch(r"card\d+", p.name)),
                           key=lambda p: int(p.name[4:]))
        except OSError:
            return NoGpu("no /sys/class/drm (not Linux, or no GPU driver)")
        amd = [c for c in cards if _read(c / "device" / "vendor") == "0x1002"]
        if not amd:
            return NoGpu("no AMD GPU in /sys/class/drm")
        return cls(amd, topology)

    def devices(self) -> list[GpuDevice]:
        gfx = [n.gfx for n in amd_gfx_targets(self.topology)]
        return [self._device(i, card, gfx[i] if i < len(gfx) else None) for i, card in enumerate(self.cards)]

    def _device(self, index: int, card: Path, gfx: str | None) -> GpuDevice:
        dev = card / "device"
        miss: dict[str, str] = {"processes": "the amdgpu sysfs files do not list processes; amdsmi does"}
        hwmons = sorted((dev / "hwmon").glob("hwmon*")) if (dev / "hwmon").is_dir() else []
        hwmon = hwmons[0] if hwmons else None
        power_file = None
        if hwmon is not None:
            power_file = hwmon / ("power1_average" if (hwmon / "power1_average").exists() else "power1_input")
        used = _sysfs_int(dev / "mem_info_vram_used", "memory", miss)
        total = _sysfs_int(dev / "mem_info_vram_total", "memory", miss)
        busy = _sysfs_int(dev / "gpu_busy_percent", "utilization", miss)
        temp = _sysfs_int(hwmon / "temp1_input" if hwmon else None, "temperature", miss)  # millidegrees
        power = _sysfs_int(power_file, "power", miss)  # microwatts
        limit = _sysfs_int(hwmon / "power1_cap" if hwmon else None, "power_limit", miss)
        device_id = _read(dev / "device") or ""
        slot = next((line.split("=", 1)[1] for line in (_read(dev / "uevent") or "").splitlines()
                     if line.startswith("PCI_SLOT_NAME=")), None)
        return GpuDevice(
            index=index, vendor="amd",
            name=_read(dev / "product_name") or AMD_NAMES.get(device_id, f"AMD GPU {device_id}"),
            uuid=_read(dev / "unique_id"), memory_used_bytes=used, memory_total_bytes=total,
            utilization_percent=busy, temperature_c=round(temp / 1000) if temp is not None else None,
            power_w=power / 1e6 if power is not None else None,
            power_limit_w=limit / 1e6 if limit is not None else None,
            processes=[], unavailable=miss, pci_bus_id=slot, gfx=gfx,
        )


def _sysfs_int(path: Path | None, key: str, miss: dict[str, str]) -> int | None:
    """An integer sysfs file, or None with the reason recorded under `key`."""
    text = _read(path)
    if text is None or not text.lstrip("-").isdigit():
        miss[key] = f"{path} is not readable" if path is not None else "the card has no hwmon folder"
        return None
    return int(text)


class AmdSmiBackend:
    """AMD GPUs through ROCm's `amdsmi`, which is never imported here: without ROCm its import
    prints to stdout (the MCP wire) and raises KeyError. A subprocess probes it and answers with
    one JSON line; whatever else it prints stays in that subprocess's pipe."""

    name = "amdsmi"

    def __init__(self, devices: list[GpuDevice]):
        self._first = devices

    @classmethod
    def open(cls) -> AmdSmiBackend | NoGpu:
        if importlib.util.find_spec("amdsmi") is None:  # finds the package without running it
            return NoGpu("amdsmi is not installed")
        failed = _amdsmi_failures.get("last")
        if failed and time.monotonic() - failed[0] < AMDSMI_RETRY_S:  # no ROCm now: none in a minute either
            return NoGpu(failed[1])
        result = _amdsmi_probe()
        if "error" in result:
            _amdsmi_failures["last"] = (time.monotonic(), f"amdsmi did not answer ({result['error']})")
            return NoGpu(_amdsmi_failures["last"][1])
        if not result["devices"]:
            return NoGpu("amdsmi lists no AMD GPU")
        return cls([_amdsmi_device(i, d) for i, d in enumerate(result["devices"])])

    def devices(self) -> list[GpuDevice]:
        if self._first is not None:  # the probe that opened the backend is the first sample
            devices, self._first = self._first, None
            return devices
        result = _amdsmi_probe()
        return [_amdsmi_device(i, d) for i, d in enumerate(result.get("devices", []))]


AMDSMI_TIMEOUT_S = 15
AMDSMI_RETRY_S = 300
_amdsmi_failures: dict[str, tuple[float, str]] = {}
# Runs in a subprocess with our interpreter; its last stdout line is the JSON answer.
_AMDSMI_PROBE = r"""
import json
def safe(fn, *args):
    try:
        return fn(*args), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
try:
    import amdsmi
    amdsmi.amdsmi_init()
except BaseException as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))
    raise SystemExit(0)
out = []
for h in amdsmi.amdsmi_get_processor_handles():
    d, miss = {}, {}
    for key, fn, args in (
        ("asic", amdsmi.amdsmi_get_gpu_asic_info, (h,)), ("vram", amdsmi.amdsmi_get_gpu_vram_usage, (h,)),
        ("activity", amdsmi.amdsmi_get_gpu_activity, (h,)), ("power", amdsmi.amdsmi_get_power_info, (h,)),
        ("processes", amdsmi.amdsmi_get_gpu_process_list, (h,)), ("uuid", amdsmi.amdsmi_get_gpu_device_uuid, (h,)),
        ("bdf", amdsmi.amdsmi_get_gpu_device_bdf, (h,)),
        ("temperature", amdsmi.amdsmi_get_temp_metric, (h, amdsmi.AmdSmiTemperatureType.EDGE,
                                                         amdsmi.AmdSmiTemperatureMetric.CURRENT)),
    ):
        d[key], why = safe(fn, *args)
        if why:
            miss[key] = why
    d["unavailable"] = miss
    out.append(d)
safe(amdsmi.amdsmi_shut_down)
print(json.dumps({"devices": out}, default=str))
"""


def _amdsmi_probe() -> dict[str, Any]:
    try:
        out = subprocess.run([sys.executable, "-c", _AMDSMI_PROBE], capture_output=True, text=True,
                             timeout=AMDSMI_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"the amdsmi probe failed: {exc}"}
    lines = out.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return {"error": f"the amdsmi probe exited {out.returncode}: {out.stderr.strip()[-200:]}"}
    return result


def _num(value: Any) -> float | None:
    """amdsmi writes "N/A" for what a card does not report."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _amdsmi_device(index: int, d: dict[str, Any]) -> GpuDevice:
    miss = dict(d.get("unavailable") or {})
    asic, vram = d.get("asic") or {}, d.get("vram") or {}
    activity, power = d.get("activity") or {}, d.get("power") or {}
    used, total = _num(vram.get("vram_used")), _num(vram.get("vram_total"))  # MB
    watts = _num(power.get("average_socket_power")) or _num(power.get("current_socket_power")) or _num(
        power.get("socket_power"))
    limit = _num(power.get("power_limit"))
    temp = _num(d.get("temperature"))
    procs = []
    for p in d.get("processes") or []:
        if isinstance(p, dict) and isinstance(p.get("pid"), int):
            vram_mem = (p.get("memory_usage") or {}).get("vram_mem")
            procs.append(GpuProcess(pid=p["pid"], used_memory_bytes=int(vram_mem) if _num(vram_mem) else None,
                                    name=p.get("name") if p.get("name") not in (None, "N/A") else None))
    for key, value in (("memory", used), ("utilization", _num(activity.get("gfx_activity"))), ("power", watts),
                       ("temperature", temp)):
        if value is None:
            miss.setdefault(key, "amdsmi reports N/A")
    gfx = asic.get("target_graphics_version")
    return GpuDevice(
        index=index, vendor="amd", name=asic.get("market_name") if asic.get("market_name") != "N/A" else None,
        uuid=d.get("uuid"), memory_used_bytes=int(used * 2**20) if used is not None else None,
        memory_total_bytes=int(total * 2**20) if total is not None else None,
        utilization_percent=int(_num(activity.get("gfx_activity"))) if _num(activity.get("gfx_activity")) is not None
        else None, temperature_c=int(temp) if temp is not None else None, power_w=watts, power_limit_w=limit,
        processes=procs, unavailable=miss, pci_bus_id=d.get("bdf"),
        gfx=gfx if isinstance(gfx, str) and gfx.startswith("gfx") and gfx != "gfx" else None,
    )


DRM_ROOT = Path("/sys/class/drm")
AMD_NAMES = {  # PCI device id -> marketing name, for cards whose driver has no product_name
    "0x747e": "Radeon RX 7800 XT / 7700 XT", "0x744c": "Radeon RX 7900 XTX / XT", "0x7480": "Radeon RX 7600",
    "0x73bf": "Radeon RX 6800 / 6900 XT", "0x73df": "Radeon RX 6700 XT", "0x740f": "Instinct MI210",
    "0x740c": "Instinct MI250X", "0x74a1": "Instinct MI300X",
}


def _read(path: Path | None) -> str | None:
    try:
        return path.read_text().strip() if path is not None else None
    except OSError:
        return None


def open_backend() -> GpuBackend:
    """The first backend whose driver answers: NVML, amdsmi, amdgpu's sysfs; else `NoGpu` with every reason."""
    reasons = []
    for opener in (NvmlBackend.open, AmdSmiBackend.open, AmdSysfsBackend.open):
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


# ---------------------------------------------------------------------------- watching over time


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


WATCHED = ("memory_used_bytes", "utilization_percent", "temperature_c", "power_w")


def summarize_samples(reports: list[GpuReport], seconds: float, interval: float,
                      run_of: dict[int, str] | None = None) -> GpuWatch:
    """Aggregate snapshots per device and metric, and per run from its processes' memory."""
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
                run_id = (run_of or {}).get(p.pid)
                if run_id and p.used_memory_bytes is not None:
                    run_memory[run_id] = run_memory.get(run_id, 0.0) + p.used_memory_bytes
        for run_id, used in run_memory.items():
            per_run.setdefault(run_id, []).append(used)

    def stat(values: list[float]) -> Stat:
        return Stat(min=min(values), mean=round(sum(values) / len(values), 3), max=max(values), samples=len(values))

    devices = [DeviceWatch(index=i, name=names[i], metrics={k: stat(v) for k, v in m.items()})
               for i, m in sorted(per_device.items())]
    backend = reports[0].backend if reports else "none"
    note = reports[-1].note if reports else "no sample taken"
    return GpuWatch(backend=backend, seconds=seconds, interval=interval, samples=len(reports), devices=devices,
                    runs={r: stat(v) for r, v in per_run.items()}, note=note)


# ---------------------------------------------------------------------------- which GPU a run sees

VISIBLE_VARS = {"nvidia": ("CUDA_VISIBLE_DEVICES",), "amd": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                                                              "CUDA_VISIBLE_DEVICES")}


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
        match = next((d for d in devices if (item.isdigit() and d.index == int(item))
                      or (item and d.uuid and (d.uuid == item or d.uuid.startswith(item)))), None)
        if match is None:
            break
        out.append(match)
    return out


# ---------------------------------------------------------------------------- memory nobody uses


class HeldMemory(BaseModel):
    """GPU memory held by a process that is gone or by one of our finished runs, with the fix."""

    gpu: int
    pid: int | None
    bytes: int | None
    why: str
    fix: str


def held_memory(report: GpuReport, finished_pids: dict[int, str]) -> list[HeldMemory]:
    """Zombie memory: a listed process that no longer exists, or a pid of one of our finished runs."""
    out = []
    for d in report.devices:
        for p in d.processes:
            if p.pid in finished_pids:
                out.append(HeldMemory(gpu=d.index, pid=p.pid, bytes=p.used_memory_bytes,
                                      why=f"pid {p.pid} of our finished run {finished_pids[p.pid]} still holds it",
                                      fix=f"kill {p.pid} (a data-loader worker or child that outlived the run)"))
            elif not psutil.pid_exists(p.pid) and p.name is None:
                out.append(HeldMemory(gpu=d.index, pid=p.pid, bytes=p.used_memory_bytes,
                                      why=f"pid {p.pid} is listed by the driver but no such process is visible "
                                      "(gone, or in another container's pid namespace)",
                                      fix="The driver usually frees it within seconds. If it stays and no "
                                      "container shares this GPU, end what still uses it or reboot "
                                      "(nvidia-smi --gpu-reset works only on an idle GPU)."))
    return out


GpuReport.model_rebuild()
