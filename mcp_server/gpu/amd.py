"""AMD GPUs: ROCm's amdsmi (probed in a subprocess), the amdgpu driver's sysfs files, and the
KFD topology for the architecture (gfx id) that pre-flight needs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server.gpu.model import GpuDevice, GpuProcess, NoGpu


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

