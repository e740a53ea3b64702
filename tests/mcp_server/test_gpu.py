import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server import gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvml_xml import XmlNvml  # noqa: E402


def test_no_driver_is_said_plainly():
    report = gpu.gpu_report(gpu.NoGpu("no NVIDIA driver answered (NVMLError_LibraryNotFound)"))
    assert report.devices == [] and report.note.startswith("No GPU found: no NVIDIA driver answered")
    assert report.host.ram_total_bytes > report.host.ram_used_bytes > 0


def test_the_server_never_imports_torch():
    code = "import sys, mcp_server.server, mcp_server.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
def test_real_nvml_matches_nvidia_smi():
    """The real NVML path against nvidia-smi's own XML, read by the fixture reader: both must
    agree, which also proves the reader that serves the fixtures. Records the XML under $OUT."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver on this machine")
    xml = subprocess.run(["nvidia-smi", "-q", "-x"], capture_output=True, text=True, check=True).stdout
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "nvidia-smi-q-x.xml").write_text(xml)
    real = gpu.gpu_report(gpu.NvmlBackend.open()).devices
    from_xml = gpu.gpu_report(gpu.NvmlBackend(XmlNvml(xml))).devices
    assert len(real) == len(from_xml) > 0
    for r, x in zip(real, from_xml, strict=True):
        assert (r.name, r.uuid, r.pci_bus_id, r.memory_total_bytes) == (
            x.name,
            x.uuid,
            x.pci_bus_id,
            x.memory_total_bytes,
        )
        assert (r.ecc is None) == (x.ecc is None) and (r.mig is None) == (x.mig is None)
        assert r.clocks.max_graphics_mhz == x.clocks.max_graphics_mhz
        assert abs(r.power_limit_w - x.power_limit_w) < 1


# ---------------------------------------------------------------------------- NVML from nvidia-smi -q -x

NVSMI = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia_smi"


def xml_devices():
    nvml = XmlNvml.from_file(NVSMI / "three_gpus.xml", OWN_PID=str(os.getpid()))
    return gpu.Sampler(backend=gpu.NvmlBackend(nvml), nested_pid_namespace=False).sample().devices


def test_nvml_clocks_throttle_reasons_and_ecc_from_a_loaded_h100():
    h100 = xml_devices()[0]
    assert h100.pci_bus_id == "00000000:18:00.0" and h100.utilization_percent == 97
    assert h100.clocks.model_dump() == {
        "graphics_mhz": 1755,
        "sm_mhz": 1755,
        "memory_mhz": 2619,
        "max_graphics_mhz": 1980,
        "max_memory_mhz": 2619,
        "throttle_reasons": ["power cap"],
    }
    assert (h100.ecc.corrected_volatile, h100.ecc.uncorrected_volatile, h100.ecc.uncorrected_aggregate) == (2, 0, 1)
    ours, other = h100.processes
    assert (ours.pid, ours.name, ours.used_memory_bytes) == (os.getpid(), "python", 18810 * 2**20)
    assert ours.user and ours.command and "python" in ours.command
    assert other.name is None and other.user is None  # pid 4194301 is no process here


def test_nvml_mig_slices_are_listed_with_their_processes_once():
    a100 = xml_devices()[1]
    assert a100.utilization_percent is None and "NotSupported" in a100.unavailable["utilization"]
    assert [(m.index, m.memory_total_bytes // 2**20) for m in a100.mig] == [(0, 19968), (1, 9984)]
    assert a100.processes == [] and [p.pid for p in a100.mig[0].processes] == [4194302]
    (seen,) = gpu.visible_devices([a100], {"CUDA_VISIBLE_DEVICES": "MIG-66666666"})
    assert (seen.uuid, seen.memory_total_bytes, seen.memory_used_bytes) == (
        "MIG-66666666-7777-8888-9999-aaaaaaaaaaaa",
        9984 * 2**20,
        13 * 2**20,
    )  # the slice, not the card


def test_nvml_a_card_without_ecc_or_mig_says_so():
    rtx = xml_devices()[2]
    assert rtx.ecc is None and "NotSupported" in rtx.unavailable["ecc"] and rtx.mig is None
    assert rtx.clocks.throttle_reasons == ["idle"] and rtx.utilization_percent == 0  # a measured 0 stays 0


# ---------------------------------------------------------------------------- containers


def test_a_nested_pid_namespace_is_recognised(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nNSpid:\t812345\t17\n")
    assert gpu.pid_namespace_is_nested(status)
    status.write_text("Name:\tpython\nNSpid:\t812345\n")
    assert not gpu.pid_namespace_is_nested(status)
    assert not gpu.pid_namespace_is_nested(tmp_path / "absent")


def test_in_a_container_runs_are_matched_to_gpu_processes_by_their_own_memory(scripted):
    """NVML's pids are host pids there; the run's trainer reported 6 GiB reserved (trainkit's
    device_memory event), and the process using 6.4 GiB (6 GiB + its CUDA context) is the run's."""
    from conftest import wait_until
    from mcp_server import paths, runs
    from mcp_server.rundir import open_run

    launched = runs.launch("902")
    run = open_run(paths.runs_root(), launched.run_id)
    wait_until(lambda: run.metrics.is_file() and run.metrics.stat().st_size, what="the run's first metrics")
    with run.metrics.open("a") as fh:  # what trainkit writes on a GPU (CI has none)
        fh.write(
            json.dumps(
                {
                    "t": 0,
                    "event": "device_memory",
                    "device": 0,
                    "pid": 17,
                    "reserved_bytes": 6 * 2**30,
                    "peak_reserved_bytes": 6 * 2**30,
                }
            )
            + "\n"
        )
    host_pids = [
        gpu.GpuProcess(pid=3_000_001, used_memory_bytes=int(6.4 * 2**30), name=None),
        gpu.GpuProcess(pid=3_000_002, used_memory_bytes=20 * 2**30, name=None),
    ]
    sampler = gpu.Sampler(
        paths.runs_root(), SequenceBackend([[device(27, 90, 60, host_pids)]]), nested_pid_namespace=True
    )
    report = sampler.sample()
    listed = report.devices[0].processes
    assert [(p.run_id, p.matched_by) for p in listed] == [(launched.run_id, "memory"), (None, None)]
    assert report.pid_namespace == "container" and "host pids" in report.note
    assert all(p.command is None for p in listed)  # a host pid names no process here
    runs.stop(launched.run_id, grace_s=1.0)


# ---------------------------------------------------------------------------- AMD through sysfs

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs" / "rx7800xt" / "drm"
KFD = Path(__file__).resolve().parent.parent / "fixtures" / "kfd" / "rx7800xt" / "nodes"


def test_amd_sysfs_backend_reads_the_card_and_says_what_it_cannot():
    backend = gpu.AmdSysfsBackend.open(drm=SYSFS, topology=KFD)
    assert isinstance(backend, gpu.AmdSysfsBackend) and [c.name for c in backend.cards] == ["card0"]  # not the iGPU
    (dev,) = backend.devices()
    assert (dev.vendor, dev.name, dev.gfx, dev.pci_bus_id) == (
        "amd",
        "Radeon RX 7800 XT / 7700 XT",
        "gfx1101",
        "0000:03:00.0",
    )
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
    monkeypatch.setattr(gpu.amd, "DRM_ROOT", SYSFS)
    monkeypatch.setattr(gpu.amd, "KFD_TOPOLOGY", KFD)
    report = gpu.gpu_report()
    assert report.backend == "amdgpu-sysfs" and report.devices[0].gfx == "gfx1101"
    monkeypatch.setattr(gpu.amd, "DRM_ROOT", SYSFS / "absent")
    report = gpu.gpu_report()
    assert report.backend == "none" and "no NVIDIA driver answered" in report.note and "/sys/class/drm" in report.note


# ---------------------------------------------------------------------------- gpu_watch


def use_backend(monkeypatch, backend):
    """Make every tool's shared sampler open `backend` (a fake vendor backend: no GPU in CI)."""
    monkeypatch.setattr(gpu.sampling, "_shared", {})
    monkeypatch.setattr(gpu.sampling, "open_backend", lambda: backend)


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
    return gpu.GpuDevice(
        index=0,
        vendor="nvidia",
        name="Fake H100",
        uuid="GPU-0",
        memory_used_bytes=used_gib * 2**30,
        memory_total_bytes=80 * 2**30,
        utilization_percent=util,
        temperature_c=temp,
        power_w=None,
        power_limit_w=700.0,
        processes=list(procs),
        unavailable={"power": "not supported"},
    )


def test_samples_aggregate_per_device_and_per_run():
    def proc(pid, gib):
        return gpu.GpuProcess(pid=pid, used_memory_bytes=gib * 2**30, name="python", run_id="run-a")

    frames = [
        [device(10, 0, 40, [proc(11, 1)])],
        [device(20, 100, 60, [proc(11, 3), proc(12, 1)])],
        [device(30, 50, 50)],
    ]
    reports = [gpu.gpu_report(SequenceBackend([f])) for f in frames]
    watch = gpu.summarize_samples(reports, 2.0, 1.0)
    m = watch.devices[0].metrics
    assert (m["memory_used_bytes"].min, m["memory_used_bytes"].max) == (10 * 2**30, 30 * 2**30)
    assert (m["utilization_percent"].mean, m["temperature_c"].max) == (50.0, 60.0)
    assert "power_w" not in m  # unknown stays unknown, never 0
    assert watch.runs["run-a"].max == 4 * 2**30 and watch.runs["run-a"].samples == 2
    assert watch.samples == 3


def test_gpu_watch_tool_samples_over_time_with_progress(monkeypatch, scripted):
    from conftest import call

    frames = [[device(g, 10 * g, 30 + g)] for g in range(1, 20)]
    use_backend(monkeypatch, SequenceBackend(frames))
    result = call("gpu_watch", {"seconds": 1.0, "interval": 0.2})
    assert not result.is_error, result.content[0].text
    watch = result.structured_content
    assert 4 <= watch["samples"] <= 6 and watch["backend"] == "fake"
    temps = watch["devices"][0]["metrics"]["temperature_c"]
    assert temps["min"] == 31 and temps["max"] == 30 + watch["samples"]
    assert "seconds is 1000; pass more than 0 and at most 300" in call("gpu_watch", {"seconds": 1000}).content[0].text


def test_gpu_status_names_the_run_a_gpu_process_belongs_to(monkeypatch, scripted):
    from conftest import ok, wait_until
    from mcp_server import paths, runs
    from mcp_server.rundir import open_run

    launched = runs.launch("902")
    run = open_run(paths.runs_root(), launched.run_id)
    pid = wait_until(lambda: run.read_state().pid, what="the trainer's pid")
    procs = [
        gpu.GpuProcess(pid=pid, used_memory_bytes=2**30, name="python"),
        gpu.GpuProcess(pid=1, used_memory_bytes=2**30, name="init"),
    ]
    use_backend(monkeypatch, SequenceBackend([[device(5, 50, 50, procs)]]))
    listed = ok("gpu_status")["devices"][0]["processes"]
    assert [(p["pid"], p["run_id"], p["matched_by"]) for p in listed] == [
        (pid, launched.run_id, "pid"),
        (1, None, None),
    ]
    assert "scripted_trainer.py" in listed[0]["command"]  # the command line, from this host's process table
    runs.stop(launched.run_id, grace_s=1.0)


# ---------------------------------------------------------------------------- visible devices, held memory


def two_gpus():
    return [
        gpu.GpuDevice(
            index=i,
            vendor="nvidia",
            name=f"GPU{i}",
            uuid=f"GPU-{i}abc",
            memory_used_bytes=used,
            memory_total_bytes=80 * 2**30,
            utilization_percent=0,
            temperature_c=30,
            power_w=None,
            power_limit_w=None,
            processes=[],
            unavailable={},
        )
        for i, used in ((0, 79 * 2**30), (1, 1 * 2**30))
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [0, 1]),
        ({"CUDA_VISIBLE_DEVICES": "1"}, [1]),
        ({"CUDA_VISIBLE_DEVICES": "1,0"}, [1, 0]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-1"}, [1]),  # a UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "0,7,1"}, [0]),  # an unknown entry ends the list, as CUDA does
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"HIP_VISIBLE_DEVICES": "1"}, [0, 1]),  # not an NVIDIA variable
    ],
)
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


# The torch probe's answers as recorded on the fake NVML's machine (three_gpus.xml: NVML lists the
# H100, the A100 and the RTX 4090). CUDA's default order is fastest first, so torch numbers them
# differently; torch_probe writes each UUID as NVML does, but a bare torch str() has no prefix.
H100_UUID, A100_UUID, RTX_UUID = (
    "GPU-5d3f0e2c-1a7b-4c2e-9f1e-3b8a6c4d2e10",
    "GPU-8a1c2b3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
    "GPU-0f0e0d0c-0b0a-0908-0706-050403020100",
)
FASTEST_FIRST = {
    "torch": "2.13.0+cu130",
    "cuda": "13.0",
    "cuda_available": True,
    "devices": ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"],
    "uuids": [RTX_UUID, H100_UUID.removeprefix("GPU-"), A100_UUID],
}


def free_of(d):
    return d.memory_total_bytes - d.memory_used_bytes


def test_the_memory_estimate_finds_the_run_s_gpu_by_uuid_when_torch_s_order_is_not_nvml_s(monkeypatch):
    from mcp_server import memory

    for var in memory.DEVICE_VARS:
        monkeypatch.delenv(var, raising=False)
    devices = xml_devices()
    h100, a100, rtx = devices
    report = gpu.GpuReport(backend="nvml", devices=devices, note="", host=gpu.host_status())
    kind, name, free, total = memory._target({"device": "cuda:0"}, FASTEST_FIRST, report, {})
    assert (kind, name, free, total) == ("gpu", "GPU 2 (NVIDIA GeForce RTX 4090)", free_of(rtx), rtx.memory_total_bytes)
    assert free != free_of(h100)  # NVML's GPU 0, the guess an index alone makes
    name, free = memory._target({"device": "cuda:1"}, FASTEST_FIRST, report, {})[1:3]
    assert (name, free) == ("GPU 0 (NVIDIA H100 80GB HBM3)", free_of(h100))  # torch's bare UUID matches too
    # the spec's [env] orders by speed for a slotted run (device auto): the probe ran under it
    name, free = memory._target({}, FASTEST_FIRST, report, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})[1:3]
    assert (name, free) == ("GPU 2 (NVIDIA GeForce RTX 4090)", free_of(rtx))


def test_without_a_uuid_from_torch_the_gpu_is_taken_by_index_and_a_guess_is_said_so(monkeypatch):
    from mcp_server import memory

    for var in memory.DEVICE_VARS:
        monkeypatch.delenv(var, raising=False)
    report = gpu.GpuReport(backend="nvml", devices=xml_devices(), note="", host=gpu.host_status())
    old_torch = FASTEST_FIRST | {"uuids": None}  # torch < 2.4 has no uuid property
    name = memory._target({"device": "cuda:1"}, old_torch, report, {})[1]
    assert name.startswith("GPU 1 (NVIDIA A100-SXM4-40GB, taken for the run's cuda:1 without a UUID")
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in name
    # a slotted run gets PCI bus order, NVML's own: an index is then exact, not a guess
    assert memory._target({}, old_torch, report, {})[1] == "GPU 0 (NVIDIA H100 80GB HBM3)"
    assert memory._target({}, old_torch, report, {"CUDA_VISIBLE_DEVICES": "2"})[1] == "GPU 2 (NVIDIA GeForce RTX 4090)"


def test_a_uuid_of_a_mig_slice_is_that_slice(monkeypatch):
    from mcp_server import memory

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report = gpu.GpuReport(backend="nvml", devices=xml_devices(), note="", host=gpu.host_status())
    on_slice = {"devices": ["NVIDIA A100-SXM4-40GB MIG 1g.10gb"], "uuids": ["GPU-66666666-7777-8888-9999-aaaaaaaaaaaa"]}
    kind, name, free, total = memory._target({}, on_slice, report, {"CUDA_VISIBLE_DEVICES": "MIG-66666666"})
    assert (name, free, total) == ("GPU 1 (NVIDIA A100-SXM4-40GB MIG slice 1)", (9984 - 13) * 2**20, 9984 * 2**20)


def test_the_run_s_device_variables_are_ours_then_the_spec_s_with_the_slot_s_order(monkeypatch):
    from mcp_server import memory

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0")
    assert memory.run_devices_env({}, {}) == {
        "CUDA_VISIBLE_DEVICES": "1,2",
        "HIP_VISIBLE_DEVICES": "0",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert memory.run_devices_env({"device": "cuda:1"}, {"CUDA_VISIBLE_DEVICES": "2"}) == {
        "CUDA_VISIBLE_DEVICES": "2",
        "HIP_VISIBLE_DEVICES": "0",
    }  # cuda:N: no slot, CUDA's own order
    assert memory.run_devices_env({}, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert [memory.cuda_ordinal({"device": d}) for d in ("cuda:3", "cuda", "auto", "cuda:1\n")] == [3, 0, 0, 0]


def test_uuids_compare_in_every_spelling():
    assert gpu.uuid_key("GPU-5D3F0E2C-1a7b") == gpu.uuid_key("5d3f0e2c-1a7b") == "5d3f0e2c1a7b"
    assert gpu.uuid_key("MIG-66666666-7777") == "666666667777" and gpu.uuid_key("") is None
    assert gpu.device_by_uuid(xml_devices(), "GPU-00000000-0000") is None


def test_held_memory_names_vanished_processes_and_our_finished_runs():
    devices = two_gpus()
    devices[0].processes = [
        gpu.GpuProcess(pid=2**22 + 12345, used_memory_bytes=2**30, name=None),
        gpu.GpuProcess(pid=os.getpid(), used_memory_bytes=2**29, name="python"),
        gpu.GpuProcess(pid=1, used_memory_bytes=2**28, name="init"),
    ]
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
    monkeypatch.setattr(gpu.amd, "_amdsmi_failures", {})
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
    monkeypatch.setattr(gpu.amd, "_amdsmi_failures", {})
    backend = gpu.AmdSmiBackend.open()
    assert isinstance(backend, gpu.NoGpu) and "KeyError" in backend.why
    assert capfd.readouterr().out == "" and "amdsmi" not in sys.modules


# ---------------------------------------------------------------------------- amd-smi CLI, as a subprocess

AMD_SMI = Path(__file__).resolve().parent.parent / "fixtures" / "amd_smi"


def fake_amd_smi(tmp_path, monkeypatch, shape):
    """An `amd-smi` on PATH that prints the fixture of its subcommand (exit 1 if there is none)."""
    folder = tmp_path / shape
    folder.mkdir()
    for f in (AMD_SMI / shape).glob("*.json"):
        (folder / f.name).write_text(f.read_text().replace("{OWN_PID}", str(os.getpid())))
    exe = tmp_path / "bin" / "amd-smi"
    exe.parent.mkdir()
    exe.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\n"
        f"f = pathlib.Path({str(folder)!r}) / (sys.argv[1] + '.json')\n"
        "print(f.read_text()) if f.exists() else sys.exit('amd-smi: no such command')\n"
    )
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_amd_smi_cli_json_of_rocm_7_is_mapped(tmp_path, monkeypatch):
    fake_amd_smi(tmp_path, monkeypatch, "rocm7")
    backend = gpu.AmdSmiCliBackend.open()
    (d,) = gpu.Sampler(backend=backend, nested_pid_namespace=False).sample().devices
    assert (d.name, d.gfx, d.pci_bus_id, d.uuid) == (
        "AMD Radeon RX 7800 XT",
        "gfx1101",
        "0000:03:00.0",
        "5eff747e-0000-1000-80c3-a1b2c3d4e5f6",
    )
    assert (d.memory_used_bytes, d.memory_total_bytes) == (13112 * 2**20, 16368 * 2**20)
    assert (d.utilization_percent, d.temperature_c, d.power_w, d.power_limit_w) == (98, 71, 241.0, 263.0)
    assert (d.clocks.graphics_mhz, d.clocks.max_graphics_mhz, d.clocks.memory_mhz) == (2254, 2565, 1218)
    assert d.clocks.throttle_reasons is None and d.ecc is None  # N/A on this card: unknown, not "none"
    (p,) = d.processes
    assert (p.pid, p.used_memory_bytes, p.name) == (os.getpid(), 12884 * 2**20, "python") and p.command


def test_amd_smi_cli_json_of_rocm_6_is_mapped_and_na_stays_unknown(tmp_path, monkeypatch):
    fake_amd_smi(tmp_path, monkeypatch, "rocm6")
    (d,) = gpu.AmdSmiCliBackend.open().devices()
    assert d.memory_total_bytes == 16368 * 2**20 and d.memory_used_bytes is None
    assert d.unavailable["memory"] == "amd-smi reports N/A" and d.uuid is None  # no `list` in this version
    assert (d.utilization_percent, d.temperature_c, d.power_w, d.power_limit_w) == (0, 38, 9.0, 263.0)
    assert d.clocks.throttle_reasons == [] and d.processes == []


def test_the_backend_chain_reaches_amd_smi_when_the_python_package_fails(tmp_path, monkeypatch):
    fake_amd_smi(tmp_path, monkeypatch, "rocm7")
    monkeypatch.setattr(gpu.NvmlBackend, "open", classmethod(lambda cls: gpu.NoGpu("no NVIDIA driver answered")))
    monkeypatch.setattr(gpu.AmdSmiBackend, "open", classmethod(lambda cls: gpu.NoGpu("amdsmi did not answer")))
    report = gpu.gpu_report()
    assert report.backend == "amd-smi" and report.devices[0].gfx == "gfx1101"
    broken = tmp_path / "bin" / "amd-smi"
    broken.write_text(f"#!{sys.executable}\nprint('amd-smi: ROCm is not installed')\nraise SystemExit(1)\n")
    why = gpu.AmdSmiCliBackend.open().why
    assert why.startswith("amd-smi static failed (exit 1: amd-smi: ROCm is not installed")
