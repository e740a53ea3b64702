import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mcp_server import gpu


class NotSupported(Exception):
    """Stands in for pynvml.NVMLError_NotSupported."""


class FakeNvml:
    """The slice of nvidia-ml-py that the backend calls; one GPU, a MIG-like missing metric."""

    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"h{i}"

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-0000"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=2 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        raise NotSupported("Not Supported")

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 41

    def nvmlDeviceGetPowerUsage(self, h):
        return 72500

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=999999999, usedGpuMemory=512 * 2**20)]


def test_nvml_figures_are_converted_and_a_missing_metric_is_null_with_its_reason():
    report = gpu.gpu_report(gpu.NvmlBackend(FakeNvml()))
    (dev,) = report.devices
    assert dev.name == "NVIDIA H100 80GB HBM3" and dev.memory_total_bytes == 80 * 2**30
    assert dev.power_w == 72.5 and dev.power_limit_w == 700.0 and dev.temperature_c == 41
    assert dev.utilization_percent is None and "NotSupported" in dev.unavailable["utilization"]
    assert dev.processes[0].used_memory_bytes == 512 * 2**20 and dev.processes[0].name is None
    assert report.note == "1 GPU(s) through nvml"


def test_no_driver_is_said_plainly():
    report = gpu.gpu_report(gpu.NoGpu("no NVIDIA driver answered (NVMLError_LibraryNotFound)"))
    assert report.devices == [] and report.note.startswith("No GPU found: no NVIDIA driver answered")
    assert report.host.ram_total_bytes > report.host.ram_used_bytes > 0


def test_the_server_never_imports_torch():
    code = "import sys, mcp_server.server, mcp_server.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
def test_real_nvml_matches_nvidia_smi():
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver on this machine")
    report = gpu.gpu_report()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert len(report.devices) == len(smi)
    for dev, line in zip(report.devices, smi, strict=True):
        name, total_mib = (x.strip() for x in line.split(","))
        assert dev.name == name and abs(dev.memory_total_bytes / 2**20 - int(total_mib)) <= 1
