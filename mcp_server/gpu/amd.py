"""AMD GPUs: ROCm's amdsmi (probed in a subprocess), the amdgpu driver's sysfs files, and the
KFD topology for the architecture (gfx id) that pre-flight needs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server import probe
from mcp_server.gpu.model import Clocks, Ecc, GpuDevice, GpuProcess, NoGpu


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
            cards = sorted(
                (p for p in root.iterdir() if re.fullmatch(r"card\d+", p.name)), key=lambda p: int(p.name[4:])
            )
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
        slot = next(
            (
                line.split("=", 1)[1]
                for line in (_read(dev / "uevent") or "").splitlines()
                if line.startswith("PCI_SLOT_NAME=")
            ),
            None,
        )
        return GpuDevice(
            index=index,
            vendor="amd",
            name=_read(dev / "product_name") or AMD_NAMES.get(device_id, f"AMD GPU {device_id}"),
            uuid=_read(dev / "unique_id"),
            memory_used_bytes=used,
            memory_total_bytes=total,
            utilization_percent=busy,
            temperature_c=round(temp / 1000) if temp is not None else None,
            power_w=power / 1e6 if power is not None else None,
            power_limit_w=limit / 1e6 if limit is not None else None,
            processes=[],
            unavailable=miss,
            pci_bus_id=slot,
            gfx=gfx,
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


def _amdsmi_probe() -> dict[str, Any]:
    """amdsmi's answer from `mcp_server/probes/amd_probe.py`, run with our own interpreter (amdsmi
    is our dependency), or {"error": why}."""
    try:
        answer = probe.run(sys.executable, "amd_probe", timeout_s=AMDSMI_TIMEOUT_S)
    except probe.ProbeError as exc:
        return {"error": str(exc)}
    if "error" not in answer.data and not isinstance(answer.data.get("devices"), list):
        return {"error": "the amd_probe answer has no device list"}
    return answer.data


def _num(value: Any) -> float | None:
    """amdsmi writes "N/A" for what a card does not report."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _amdsmi_device(index: int, d: dict[str, Any]) -> GpuDevice:
    miss = dict(d.get("unavailable") or {})
    asic, vram = d.get("asic") or {}, d.get("vram") or {}
    activity, power = d.get("activity") or {}, d.get("power") or {}
    used, total = _num(vram.get("vram_used")), _num(vram.get("vram_total"))  # MB
    watts = (
        _num(power.get("average_socket_power"))
        or _num(power.get("current_socket_power"))
        or _num(power.get("socket_power"))
    )
    limit = _num(power.get("power_limit"))
    temp = _num(d.get("temperature"))
    procs = []
    for p in d.get("processes") or []:
        if isinstance(p, dict) and isinstance(p.get("pid"), int):
            vram_mem = (p.get("memory_usage") or {}).get("vram_mem")
            procs.append(
                GpuProcess(
                    pid=p["pid"],
                    used_memory_bytes=int(vram_mem) if _num(vram_mem) else None,
                    name=p.get("name") if p.get("name") not in (None, "N/A") else None,
                )
            )
    for key, value in (
        ("memory", used),
        ("utilization", _num(activity.get("gfx_activity"))),
        ("power", watts),
        ("temperature", temp),
    ):
        if value is None:
            miss.setdefault(key, "amdsmi reports N/A")
    gfx = asic.get("target_graphics_version")
    return GpuDevice(
        index=index,
        vendor="amd",
        name=asic.get("market_name") if asic.get("market_name") != "N/A" else None,
        uuid=d.get("uuid"),
        memory_used_bytes=int(used * 2**20) if used is not None else None,
        memory_total_bytes=int(total * 2**20) if total is not None else None,
        utilization_percent=int(_num(activity.get("gfx_activity")))
        if _num(activity.get("gfx_activity")) is not None
        else None,
        temperature_c=int(temp) if temp is not None else None,
        power_w=watts,
        power_limit_w=limit,
        processes=procs,
        unavailable=miss,
        pci_bus_id=d.get("bdf"),
        gfx=gfx if isinstance(gfx, str) and gfx.startswith("gfx") and gfx != "gfx" else None,
    )


class AmdSmiCliBackend:
    """AMD GPUs through the `amd-smi` command's JSON, for machines with ROCm's CLI but no usable
    `amdsmi` Python package in our interpreter (a system ROCm, a venv without it).

    Reads `amd-smi static`, `list` (once) and `metric`, `process` (each sample), in both shapes
    the tool has had: a bare list of GPUs with plain numbers (ROCm 6.0-6.2) and
    `{"gpu_data": [...]}` with `{"value", "unit"}` leaves (ROCm 6.3 on). "N/A" stays unknown.
    """

    name = "amd-smi"

    def __init__(self, exe: str, static: list[dict[str, Any]], listing: list[dict[str, Any]]):
        self.exe, self.static, self.listing = exe, static, listing

    @classmethod
    def open(cls) -> AmdSmiCliBackend | NoGpu:
        exe = shutil.which("amd-smi")
        if exe is None:
            return NoGpu("no amd-smi on PATH")
        static, why = _amd_smi_json(exe, "static")
        if static is None:
            return NoGpu(f"amd-smi static failed ({why})")
        if not static:
            return NoGpu("amd-smi lists no AMD GPU")
        listing, _ = _amd_smi_json(exe, "list")  # UUIDs; optional
        return cls(exe, static, listing or [])

    def devices(self) -> list[GpuDevice]:
        metrics, metric_why = _amd_smi_json(self.exe, "metric")
        procs, proc_why = _amd_smi_json(self.exe, "process")
        out = []
        for i, static in enumerate(self.static):
            miss: dict[str, str] = {}
            gpu_id = static.get("gpu", i)
            metric = _by_gpu(metrics or [], gpu_id, i)
            if metrics is None:
                miss["metrics"] = f"amd-smi metric failed ({metric_why})"
            listed = _by_gpu(self.listing, gpu_id, i)
            used = _cli_bytes(_dig(metric, "mem_usage", "used_vram"), miss, "memory")
            total = _cli_bytes(_dig(metric, "mem_usage", "total_vram"), None, "memory") or _cli_bytes(
                _dig(static, "vram", "size"), miss, "memory"
            )
            temp = _cli_value(_dig(metric, "temperature", "edge"), miss, "temperature")
            power = _cli_value(_dig(metric, "power", "socket_power"), miss, "power")
            limit = _cli_value(
                _dig(static, "limit", "max_power") or _dig(metric, "power", "power_limit"), miss, "power_limit"
            )
            busy = _cli_value(_dig(metric, "usage", "gfx_activity"), miss, "utilization")
            gfx = _dig(static, "asic", "target_graphics_version")
            name = _dig(static, "asic", "market_name")
            out.append(
                GpuDevice(
                    index=i,
                    vendor="amd",
                    name=name if isinstance(name, str) and name != "N/A" else None,
                    uuid=listed.get("uuid") if isinstance(listed.get("uuid"), str) else None,
                    memory_used_bytes=used,
                    memory_total_bytes=total,
                    utilization_percent=int(busy) if busy is not None else None,
                    temperature_c=int(temp) if temp is not None else None,
                    power_w=power,
                    power_limit_w=limit,
                    processes=_cli_processes(
                        _by_gpu(procs or [], gpu_id, i), miss, proc_why if procs is None else None
                    ),
                    unavailable=miss,
                    pci_bus_id=_dig(static, "bus", "bdf") or listed.get("bdf"),
                    gfx=gfx if isinstance(gfx, str) and gfx.startswith("gfx") and gfx != "gfx" else None,
                    clocks=_cli_clocks(metric),
                    ecc=_cli_ecc(metric),
                )
            )
        return out


def _amd_smi_json(exe: str, command: str) -> tuple[list[dict[str, Any]] | None, str]:
    """`amd-smi <command> --json` as a list of per-GPU objects, or (None, why)."""
    try:
        done = subprocess.run(
            [exe, command, "--json"],
            capture_output=True,
            text=True,
            timeout=AMDSMI_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        return None, f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-200:]}"
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    return ([d for d in data if isinstance(d, dict)] if isinstance(data, list) else None), "not a list of GPUs"


def _by_gpu(items: list[dict[str, Any]], gpu_id: Any, position: int) -> dict[str, Any]:
    match = next((d for d in items if d.get("gpu") == gpu_id), None)
    if match is None and position < len(items) and "gpu" not in items[position]:
        match = items[position]
    return match or {}


def _dig(d: Any, *keys: str) -> Any:
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return d


UNIT_BYTES = {"B": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30}


def _cli_leaf(leaf: Any) -> tuple[float | None, str | None]:
    """A leaf as (number, unit): 12, "12", "12 MB", {"value": 12, "unit": "MB"}; "N/A" -> None."""
    unit = None
    if isinstance(leaf, dict):
        leaf, unit = leaf.get("value"), leaf.get("unit")
    if isinstance(leaf, str):
        parts = leaf.split()
        if parts and parts[0].replace(".", "", 1).isdigit():
            leaf, unit = float(parts[0]), (parts[1] if len(parts) > 1 else unit)
    if isinstance(leaf, bool) or not isinstance(leaf, int | float):
        return None, unit
    return float(leaf), unit


def _cli_value(leaf: Any, miss: dict[str, str] | None, key: str) -> float | None:
    value, _ = _cli_leaf(leaf)
    if value is None and miss is not None:
        miss.setdefault(key, "amd-smi reports N/A" if leaf is not None else "amd-smi does not report it")
    return value


def _cli_bytes(leaf: Any, miss: dict[str, str] | None, key: str) -> int | None:
    """amd-smi writes memory in MB that are MiB (it divides bytes by 2**20); bytes when unit is B."""
    value, unit = _cli_leaf(leaf)
    if value is None:
        if miss is not None:
            miss.setdefault(key, "amd-smi reports N/A" if leaf is not None else "amd-smi does not report it")
        return None
    return int(value * UNIT_BYTES.get(str(unit or "MB").upper(), 2**20))


def _cli_processes(entry: dict[str, Any], miss: dict[str, str], why: str | None) -> list[GpuProcess]:
    if why is not None:
        miss["processes"] = f"amd-smi process failed ({why})"
        return []
    out = []
    for item in entry.get("process_list") or []:
        info = item.get("process_info") if isinstance(item, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            continue  # "No running processes detected"
        vram = _dig(info, "memory_usage", "vram_mem") or _dig(info, "mem_usage", "vram_mem")
        name = info.get("name")
        out.append(
            GpuProcess(
                pid=info["pid"],
                used_memory_bytes=_cli_bytes(vram, None, "vram"),
                name=name if isinstance(name, str) and name != "N/A" else None,
            )
        )
    return out


def _cli_clocks(metric: dict[str, Any]) -> Clocks | None:
    gfx, mem = _dig(metric, "clock", "gfx_0") or {}, _dig(metric, "clock", "mem_0") or {}
    if not gfx and not mem:
        return None

    def mhz(leaf: Any) -> int | None:
        value, _ = _cli_leaf(leaf)
        return int(value) if value is not None else None

    status = _dig(metric, "power", "throttle_status")
    reasons = None
    if isinstance(status, str) and status != "N/A":
        reasons = [] if status.upper() in ("UNTHROTTLED", "NONE") else [status.lower()]
    return Clocks(
        graphics_mhz=mhz(gfx.get("clk")),
        sm_mhz=None,
        memory_mhz=mhz(mem.get("clk")),
        max_graphics_mhz=mhz(gfx.get("max_clk")),
        max_memory_mhz=mhz(mem.get("max_clk")),
        throttle_reasons=reasons,
    )


def _cli_ecc(metric: dict[str, Any]) -> Ecc | None:
    ecc = metric.get("ecc")
    if not isinstance(ecc, dict):
        return None
    corrected, _ = _cli_leaf(ecc.get("total_correctable_count"))
    uncorrected, _ = _cli_leaf(ecc.get("total_uncorrectable_count"))
    if corrected is None and uncorrected is None:
        return None  # consumer cards: N/A
    return Ecc(
        enabled=True,
        corrected_volatile=int(corrected) if corrected is not None else None,
        uncorrected_volatile=int(uncorrected) if uncorrected is not None else None,
        uncorrected_aggregate=None,
    )


DRM_ROOT = Path("/sys/class/drm")
AMD_NAMES = {  # PCI device id -> marketing name, for cards whose driver has no product_name
    "0x747e": "Radeon RX 7800 XT / 7700 XT",
    "0x744c": "Radeon RX 7900 XTX / XT",
    "0x7480": "Radeon RX 7600",
    "0x73bf": "Radeon RX 6800 / 6900 XT",
    "0x73df": "Radeon RX 6700 XT",
    "0x740f": "Instinct MI210",
    "0x740c": "Instinct MI250X",
    "0x74a1": "Instinct MI300X",
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
            nodes.append(
                AmdNode(
                    node=int(folder.name),
                    gfx=gfx_name(version),
                    device_id=int(device) if device and device.strip().isdigit() else None,
                )
            )
    return nodes
