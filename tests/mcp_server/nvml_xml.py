"""The slice of nvidia-ml-py that `NvmlBackend` calls, answered from an `nvidia-smi -q -x` file.

Errors are the real `pynvml` ones (NotSupported for an "N/A" field, NotFound for an empty MIG
slot), and constants come from the real module, so the backend's own mapping code is what runs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pynvml

REASON_TAGS = {  # the XML's clocks_event_reason_* tags -> pynvml's bit constants
    "gpu_idle": "GpuIdle",
    "applications_clocks_setting": "ApplicationsClocksSetting",
    "sw_power_cap": "SwPowerCap",
    "hw_slowdown": "HwSlowdown",
    "sync_boost": "SyncBoost",
    "sw_thermal_slowdown": "SwThermalSlowdown",
    "hw_thermal_slowdown": "HwThermalSlowdown",
    "hw_power_brake_slowdown": "HwPowerBrakeSlowdown",
    "display_clocks_setting": "DisplayClockSetting",
}


def _not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _number(node: ET.Element | None, path: str) -> float:
    """'81559 MiB' -> 81559.0; a missing or 'N/A' field is NVML's NotSupported."""
    text = node.findtext(path) if node is not None else None
    if text is None or text.strip() in ("N/A", "[N/A]", "Unknown Error", ""):
        raise _not_supported()
    return float(text.split()[0])


def _mib(node: ET.Element, path: str) -> int:
    return int(_number(node, path)) * 2**20


class XmlNvml:
    """Construct with the XML text; pass to `NvmlBackend(...)` as its NVML module."""

    def __init__(self, xml: str):
        self.root = ET.fromstring(xml)
        self.gpus = self.root.findall("gpu")

    @classmethod
    def from_file(cls, path: Path, **replace: str) -> XmlNvml:
        text = path.read_text()
        for key, value in replace.items():
            text = text.replace("{" + key + "}", value)
        return cls(text)

    def __getattr__(self, name: str):  # NVML_* constants from the real module
        if name.startswith(("NVML_", "nvmlClocks")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # devices
    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h.findtext("product_name")

    def nvmlDeviceGetUUID(self, h):
        return h.findtext("uuid")

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=h.findtext("pci/pci_bus_id"))

    def nvmlDeviceGetMemoryInfo(self, h):
        used, total = _mib(h, "fb_memory_usage/used"), _mib(h, "fb_memory_usage/total")
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(
            gpu=int(_number(h, "utilization/gpu_util")), memory=int(_number(h, "utilization/memory_util"))
        )

    def nvmlDeviceGetTemperature(self, h, sensor):
        return int(_number(h, "temperature/gpu_temp"))

    def nvmlDeviceGetPowerUsage(self, h):
        return int(_number(h, "gpu_power_readings/power_draw") * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return int(_number(h, "gpu_power_readings/current_power_limit") * 1000)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return int(_number(h, "clocks/" + self._clock_tag(kind)))

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return int(_number(h, "max_clocks/" + self._clock_tag(kind)))

    @staticmethod
    def _clock_tag(kind):
        return {
            pynvml.NVML_CLOCK_GRAPHICS: "graphics_clock",
            pynvml.NVML_CLOCK_SM: "sm_clock",
            pynvml.NVML_CLOCK_MEM: "mem_clock",
        }[kind]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        reasons = h.find("clocks_event_reasons") or h.find("clocks_throttle_reasons")
        if reasons is None:
            raise _not_supported()
        mask = 0
        for child in reasons:
            key = child.tag.removeprefix("clocks_event_reason_").removeprefix("clocks_throttle_reason_")
            if child.text == "Active" and key in REASON_TAGS:
                mask |= getattr(pynvml, f"nvmlClocksEventReason{REASON_TAGS[key]}")
        return mask

    def nvmlDeviceGetEccMode(self, h):
        current = h.findtext("ecc_mode/current_ecc")
        if current in (None, "N/A"):
            raise _not_supported()
        return [int(current == "Enabled"), int(h.findtext("ecc_mode/pending_ecc") == "Enabled")]

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        folder = h.find("ecc_errors/" + ("volatile" if counter == pynvml.NVML_VOLATILE_ECC else "aggregate"))
        if folder is None:
            raise _not_supported()
        want = "_correctable" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else "_uncorrectable"
        return sum(int(_number(child, ".")) for child in folder if want in child.tag)

    # processes and MIG
    def nvmlDeviceGetComputeRunningProcesses(self, h):
        instance = h.findtext("gpu_instance_id") if h.tag == "mig_device" else None
        parent = self._parent(h) if instance is not None else h
        out = []
        for p in parent.findall("processes/process_info"):
            if instance is None or p.findtext("gpu_instance_id") == instance:
                out.append(SimpleNamespace(pid=int(p.findtext("pid")), usedGpuMemory=_mib(p, "used_memory")))
        return out

    def _parent(self, mig: ET.Element) -> ET.Element:
        return next(g for g in self.gpus if mig in g.findall("mig_devices/mig_device"))

    def nvmlDeviceGetMigMode(self, h):
        current = h.findtext("mig_mode/current_mig")
        if current in (None, "N/A"):
            raise _not_supported()
        on = pynvml.NVML_DEVICE_MIG_ENABLE
        return [on if current == "Enabled" else 0, on if h.findtext("mig_mode/pending_mig") == "Enabled" else 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, i):
        slices = h.findall("mig_devices/mig_device")
        if i >= len(slices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return slices[i]
