import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
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


# ---------------------------------------------------------------------------- AMD through sysfs

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs" / "rx7800xt" / "drm"
KFD = Path(__file__).resolve().parent.parent / "fixtures" / "kfd" / "rx7800xt" / "nodes"


def test_amd_sysfs_backend_reads_the_card_and_says_what_it_cannot():
    backend = gpu.AmdSysfsBackend.open(drm=SYSFS, topology=KFD)
    assert isinstance(backend, gpu.AmdSysfsBackend) and [c.name for c in backend.cards] == ["card0"]  # not the iGPU
    (dev,) = backend.devices()
    assert (dev.vendor, dev.name, dev.gfx, dev.pci_bus_id) == ("amd", "Radeon RX 7800 XT / 7700 XT", "gfx1101",
                                                                "0000:03:00.0")
    assert (dev.memory_used_bytes, dev.memory_total_bytes) == (2 * 2**30, 17163091968)
    assert (dev.utilization_percent, dev.temperature_c, dev.power_w, dev.power_limit_w) == (37, 54, 87.0, 263.0)
    assert dev.processes == [] and "amdsmi" in dev.unavailable["processes"]


def test_a_missing_sysfs_file_is_null_with_its_reason(tmp_path):
    tree = tmp_path / "drm"
    shutil.copytree(SYSFS, tree)
    shutil.rmtree(tree / "card0" / "device" / "hwmon")
    (tree / "card0" / "device" / "gpu_busy_percent").write_text("garbage\n")
    (dev,) = gpu.AmdSysfsBackend(sorted(tree.glob("card0")), KFD).devices()
    assert dev.temperature_c is None and dev.unavailable["temperature"] == "the card has no hwmon folder"
    assert dev.utilization_percent is None and "gpu_busy_percent is not readable" in dev.unavailable["utilization"]
    assert dev.memory_total_bytes == 17163091968  # the rest still reads


def test_no_amd_card_is_a_plain_statement(tmp_path):
    (tmp_path / "card0" / "device").mkdir(parents=True)
    (tmp_path / "card0" / "device" / "vendor").write_text("0x8086\n")
    assert gpu.AmdSysfsBackend.open(drm=tmp_path).why == "no AMD GPU in /sys/class/drm"
    assert "no /sys/class/drm" in gpu.AmdSysfsBackend.open(drm=tmp_path / "absent").why


def test_the_backend_chain_falls_back_to_amd_sysfs(monkeypatch):
    monkeypatch.setattr(gpu.NvmlBackend, "open", classmethod(lambda cls: gpu.NoGpu("no NVIDIA driver answered")))
    monkeypatch.setattr(gpu, "DRM_ROOT", SYSFS)
    monkeypatch.setattr(gpu, "KFD_TOPOLOGY", KFD)
    report = gpu.gpu_report()
    assert report.backend == "amdgpu-sysfs" and report.devices[0].gfx == "gfx1101"
    monkeypatch.setattr(gpu, "DRM_ROOT", SYSFS / "absent")
    report = gpu.gpu_report()
    assert report.backend == "none" and "no NVIDIA driver answered" in report.note and "/sys/class/drm" in report.note


# ---------------------------------------------------------------------------- gpu_watch


class SequenceBackend:
    """A fake vendor backend replaying figures, one list of devices per sample (no GPU in CI)."""

    name = "fake"

    def __init__(self, frames):
        self.frames = list(frames)
        self.calls = 0

    def devices(self):
        frame = self.frames[min(self.calls, len(self.frames) - 1)]
        self.calls += 1
        return frame


def device(used_gib, util, temp, procs=()):
    return gpu.GpuDevice(index=0, vendor="nvidia", name="Fake H100", uuid="GPU-0", memory_used_bytes=used_gib * 2**30,
                         memory_total_bytes=80 * 2**30, utilization_percent=util, temperature_c=temp, power_w=None,
                         power_limit_w=700.0, processes=list(procs), unavailable={"power": "not supported"})


def test_samples_aggregate_per_device_and_per_run():
    frames = [[device(10, 0, 40, [gpu.GpuProcess(pid=11, used_memory_bytes=2**30, name="python")])],
              [device(20, 100, 60, [gpu.GpuProcess(pid=11, used_memory_bytes=3 * 2**30, name="python"),
                                    gpu.GpuProcess(pid=12, used_memory_bytes=2**30, name="worker")])],
              [device(30, 50, 50)]]
    reports = [gpu.gpu_report(SequenceBackend([f])) for f in frames]
    watch = gpu.summarize_samples(reports, 2.0, 1.0, {11: "run-a", 12: "run-a"})
    m = watch.devices[0].metrics
    assert (m["memory_used_bytes"].min, m["memory_used_bytes"].max) == (10 * 2**30, 30 * 2**30)
    assert (m["utilization_percent"].mean, m["temperature_c"].max) == (50.0, 60.0)
    assert "power_w" not in m  # unknown stays unknown, never 0
    assert watch.runs["run-a"].max == 4 * 2**30 and watch.runs["run-a"].samples == 2
    assert watch.samples == 3


def test_gpu_watch_tool_samples_over_time_with_progress(monkeypatch, scripted):
    from conftest import call

    frames = [[device(g, 10 * g, 30 + g)] for g in range(1, 20)]
    fake = SequenceBackend(frames)
    monkeypatch.setattr(gpu, "open_backend", lambda: fake)
    result = call("gpu_watch", {"seconds": 1.0, "interval": 0.2})
    assert not result.is_error, result.content[0].text
    watch = result.structured_content
    assert 4 <= watch["samples"] <= 6 and watch["backend"] == "fake"
    temps = watch["devices"][0]["metrics"]["temperature_c"]
    assert temps["min"] == 31 and temps["max"] == 30 + watch["samples"]
    assert "seconds takes 0-300" in call("gpu_watch", {"seconds": 1000}).content[0].text


def test_gpu_status_names_the_run_a_gpu_process_belongs_to(monkeypatch, scripted):
    from conftest import ok, wait_until
    from mcp_server import paths, runs
    from mcp_server.rundir import open_run

    launched = runs.launch("902")
    run = open_run(paths.runs_root(), launched.run_id)
    pid = wait_until(lambda: run.read_state().pid, what="the trainer's pid")
    procs = [gpu.GpuProcess(pid=pid, used_memory_bytes=2**30, name="python"),
             gpu.GpuProcess(pid=1, used_memory_bytes=2**30, name="init")]
    monkeypatch.setattr(gpu, "open_backend", lambda: SequenceBackend([[device(5, 50, 50, procs)]]))
    listed = ok("gpu_status")["devices"][0]["processes"]
    assert [(p["pid"], p["run_id"]) for p in listed] == [(pid, launched.run_id), (1, None)]
    runs.stop(launched.run_id, grace_s=1.0)


# ---------------------------------------------------------------------------- visible devices, held memory


def two_gpus():
    return [gpu.GpuDevice(index=i, vendor="nvidia", name=f"GPU{i}", uuid=f"GPU-{i}abc", memory_used_bytes=used,
                          memory_total_bytes=80 * 2**30, utilization_percent=0, temperature_c=30, power_w=None,
                          power_limit_w=None, processes=[], unavailable={})
            for i, used in ((0, 79 * 2**30), (1, 1 * 2**30))]


@pytest.mark.parametrize(("env", "expected"), [
    ({}, [0, 1]),
    ({"CUDA_VISIBLE_DEVICES": "1"}, [1]),
    ({"CUDA_VISIBLE_DEVICES": "1,0"}, [1, 0]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-1"}, [1]),  # a UUID prefix
    ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, [0]),  # an unknown entry ends the list, as CUDA does
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"HIP_VISIBLE_DEVICES": "1"}, [0, 1]),  # not an NVIDIA variable
])
def test_visible_devices_follow_the_environment(env, expected):
    assert [d.index for d in gpu.visible_devices(two_gpus(), env)] == expected


def test_amd_visibility_uses_hip_and_rocr_variables():
    amd = [d.model_copy(update={"vendor": "amd"}) for d in two_gpus()]
    assert [d.index for d in gpu.visible_devices(amd, {"ROCR_VISIBLE_DEVICES": "1"})] == [1]


def test_the_memory_estimate_targets_the_run_s_visible_gpu(monkeypatch):
    from mcp_server import memory

    report = gpu.GpuReport(backend="fake", devices=two_gpus(), note="", host=gpu.host_status())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = {"devices": ["GPU0", "GPU1"]}
    assert memory._target({}, info, report, {})[1:3] == ("GPU 0 (GPU0)", 2**30)
    kind, name, free, _ = memory._target({}, info, report, {"CUDA_VISIBLE_DEVICES": "1"})  # the spec's [env]
    assert (kind, name, free) == ("gpu", "GPU 1 (GPU1)", 79 * 2**30)


def test_held_memory_names_vanished_processes_and_our_finished_runs():
    devices = two_gpus()
    devices[0].processes = [gpu.GpuProcess(pid=2**22 + 12345, used_memory_bytes=2**30, name=None),
                            gpu.GpuProcess(pid=os.getpid(), used_memory_bytes=2**29, name="python"),
                            gpu.GpuProcess(pid=1, used_memory_bytes=2**28, name="init")]
    report = gpu.GpuReport(backend="fake", devices=devices, note="", host=gpu.host_status())
    held = gpu.held_memory(report, {os.getpid(): "001-old-run"})
    assert [(h.pid, h.bytes) for h in held] == [(2**22 + 12345, 2**30), (os.getpid(), 2**29)]
    assert "no such process is visible" in held[0].why and "001-old-run" in held[1].why
    assert held[1].fix.startswith(f"kill {os.getpid()}")


# ---------------------------------------------------------------------------- amdsmi, out of process

FAKE_AMDSMI = Path(__file__).resolve().parent.parent / "fixtures" / "fake_amdsmi"


def test_amdsmi_is_probed_in_a_subprocess_and_its_answer_mapped(monkeypatch, capfd):
    monkeypatch.syspath_prepend(str(FAKE_AMDSMI))
    monkeypatch.setenv("PYTHONPATH", str(FAKE_AMDSMI))
    monkeypatch.setattr(gpu, "_amdsmi_failures", {})
    backend = gpu.AmdSmiBackend.open()
    assert isinstance(backend, gpu.AmdSmiBackend) and "amdsmi" not in sys.modules
    (dev,) = backend.devices()
    assert (dev.name, dev.gfx, dev.pci_bus_id) == ("AMD Radeon RX 7800 XT", "gfx1101", "0000:03:00.0")
    assert (dev.memory_used_bytes, dev.memory_total_bytes) == (2048 * 2**20, 16368 * 2**20)
    assert (dev.utilization_percent, dev.power_w, dev.power_limit_w) == (97, 231.0, 263.0)
    assert dev.temperature_c is None and "NOT_SUPPORTED" in dev.unavailable["temperature"]
    assert [(p.pid, p.used_memory_bytes) for p in dev.processes] == [(4242, 3 * 2**30)]
    assert "noise" not in capfd.readouterr().out  # its import noise stayed in the probe's pipe


def test_the_real_amdsmi_without_rocm_never_reaches_stdout(monkeypatch, capfd):
    """Installed, with no ROCm: its import prints to stdout and raises KeyError (issue 6)."""
    if importlib.util.find_spec("amdsmi") is None:
        pytest.skip("amdsmi is not installed (it is a dependency: scripts/setup installs it)")
    monkeypatch.setattr(gpu, "_amdsmi_failures", {})
    backend = gpu.AmdSmiBackend.open()
    assert isinstance(backend, gpu.NoGpu) and "KeyError" in backend.why
    assert capfd.readouterr().out == "" and "amdsmi" not in sys.modules
