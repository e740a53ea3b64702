"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported lazily).

Every driver call goes through `_query`, so one unsupported metric becomes None with a reason,
never an exception: NVMLLibraryMismatchError is not an NVMLError, so everything is caught.
"""

from __future__ import annotations

from typing import Any

from mcp_server.gpu.model import Clocks, Ecc, GpuDevice, GpuProcess, MigDevice, NoGpu


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
            pci = self._query(miss, "pci", nv.nvmlDeviceGetPciInfo, h)
            out.append(
                GpuDevice(
                    index=i,
                    vendor="nvidia",
                    name=_text(self._query(miss, "name", nv.nvmlDeviceGetName, h)),
                    uuid=_text(self._query(miss, "uuid", nv.nvmlDeviceGetUUID, h)),
                    memory_used_bytes=mem.used if mem else None,
                    memory_total_bytes=mem.total if mem else None,
                    utilization_percent=util.gpu if util else None,
                    temperature_c=self._query(
                        miss, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
                    ),
                    power_w=power / 1000 if power is not None else None,
                    power_limit_w=limit / 1000 if limit is not None else None,
                    processes=self._processes(miss, h),
                    unavailable=miss,
                    pci_bus_id=_text(pci.busId) if pci is not None else None,
                    clocks=self._clocks(miss, h),
                    ecc=self._ecc(miss, h),
                    mig=self._mig(miss, h),
                )
            )
            _list_each_process_once(out[-1])
        return out

    def _processes(self, miss: dict[str, str], h: Any) -> list[GpuProcess]:
        procs = self._query(miss, "processes", self._nvml.nvmlDeviceGetComputeRunningProcesses, h) or []
        out = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)  # None when the driver withholds it (no permission, MIG)
            out.append(GpuProcess(pid=p.pid, used_memory_bytes=used if isinstance(used, int) else None, name=None))
        return out

    def _clocks(self, miss: dict[str, str], h: Any) -> Clocks | None:
        nv = self._nvml
        got = {
            key: self._query(miss, f"clocks.{key}", fn, h, kind)
            for key, fn, kind in (
                ("graphics_mhz", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_GRAPHICS),
                ("sm_mhz", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
                ("memory_mhz", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
                ("max_graphics_mhz", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_GRAPHICS),
                ("max_memory_mhz", nv.nvmlDeviceGetMaxClockInfo, nv.NVML_CLOCK_MEM),
            )
        }
        reasons_fn = (
            getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)  # the newer name
            or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        mask = self._query(miss, "clocks.throttle_reasons", reasons_fn, h)
        if all(v is None for v in got.values()) and mask is None:
            return None
        return Clocks(**got, throttle_reasons=throttle_reasons(nv, mask) if mask is not None else None)

    def _ecc(self, miss: dict[str, str], h: Any) -> Ecc | None:
        nv = self._nvml
        mode = self._query(miss, "ecc", nv.nvmlDeviceGetEccMode, h)  # [current, pending]; NotSupported: no ECC
        if not mode or not mode[0]:
            return None

        def count(kind: int, counter: int, key: str) -> int | None:
            return self._query(miss, key, nv.nvmlDeviceGetTotalEccErrors, h, kind, counter)

        return Ecc(
            enabled=True,
            corrected_volatile=count(nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC, "ecc.corrected"),
            uncorrected_volatile=count(nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC, "ecc.uncorrected"),
            uncorrected_aggregate=count(
                nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_AGGREGATE_ECC, "ecc.uncorrected_aggregate"
            ),
        )

    def _mig(self, miss: dict[str, str], h: Any) -> list[MigDevice] | None:
        """The MIG slices of a GPU in MIG mode; None when MIG is off or unsupported (most cards)."""
        nv = self._nvml
        mode = self._query({}, "mig", nv.nvmlDeviceGetMigMode, h)  # [current, pending]; NotSupported off A100+
        if not mode or mode[0] != nv.NVML_DEVICE_MIG_ENABLE:
            return None
        slices = []
        for i in range(self._query(miss, "mig.count", nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0):
            m = self._query({}, "mig.handle", nv.nvmlDeviceGetMigDeviceHandleByIndex, h, i)  # NotFound: empty slot
            if m is None:
                continue
            mem = self._query(miss, f"mig.{i}.memory", nv.nvmlDeviceGetMemoryInfo, m)
            slices.append(
                MigDevice(
                    index=i,
                    uuid=_text(self._query(miss, f"mig.{i}.uuid", nv.nvmlDeviceGetUUID, m)),
                    memory_used_bytes=mem.used if mem else None,
                    memory_total_bytes=mem.total if mem else None,
                    processes=self._processes(miss, m),
                )
            )
        return slices


def _list_each_process_once(d: GpuDevice) -> None:
    """In MIG mode the parent GPU lists every slice's processes too: keep them under their slice."""
    in_slices = {p.pid for m in d.mig or [] for p in m.processes}
    d.processes = [p for p in d.processes if p.pid not in in_slices]


# The clock-event bits NVML defines, by the names of nvidia-ml-py's constants, with what each means.
THROTTLE_REASONS = (
    ("GpuIdle", "idle"),
    ("ApplicationsClocksSetting", "application clocks setting"),
    ("SwPowerCap", "power cap"),
    ("HwSlowdown", "hardware slowdown (power or thermal)"),
    ("SyncBoost", "sync boost"),
    ("SwThermalSlowdown", "thermal slowdown (software)"),
    ("HwThermalSlowdown", "thermal slowdown (hardware)"),
    ("HwPowerBrakeSlowdown", "power brake (hardware)"),
    ("DisplayClockSetting", "display clock setting"),
)


def throttle_reasons(nv: Any, mask: int) -> list[str]:
    """The names of the bits set in NVML's clock-event (throttle) reasons mask."""
    out = []
    for name, label in THROTTLE_REASONS:
        bit = getattr(nv, f"nvmlClocksEventReason{name}", None) or getattr(nv, f"nvmlClocksThrottleReason{name}", 0)
        if bit and mask & bit:
            out.append(label)
    return out


def _text(value: Any) -> str | None:
    """NVML strings arrive as str (nvidia-ml-py >= 11.515) or bytes (older)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
