"""Pre-flight checks with a pass and a fail case each (GPU facts from a fake report)."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import FIXTURES, make_venv, wait_until, write_experiment
from mcp_server import gpu, preflight
from mcp_server.preflight import run_preflight

CPU_TORCH = {
    "python": "3.11",
    "torch": "2.13.0+cpu",
    "cuda": None,
    "hip": None,
    "cuda_available": False,
    "devices": [],
    "mps_available": False,
}
CUDA_TORCH = CPU_TORCH | {"torch": "2.13.0+cu130", "cuda": "13.0", "cuda_available": True, "devices": ["H100"]}


def report_with(*vendors):
    host = gpu.host_status()
    devices = [
        gpu.GpuDevice(
            index=i,
            vendor=v,
            name=f"{v} gpu",
            uuid=None,
            memory_used_bytes=0,
            memory_total_bytes=2**34,
            utilization_percent=0,
            temperature_c=30,
            power_w=None,
            power_limit_w=None,
            processes=[],
            unavailable={},
        )
        for i, v in enumerate(vendors)
    ]
    return gpu.GpuReport(backend="fake", devices=devices, note="", host=host)


def test_torch_build_matches_the_gpu_that_is_there():
    assert preflight._build_check(CUDA_TORCH, report_with("nvidia")).verdict == "pass"
    assert preflight._build_check(CPU_TORCH, report_with()).verdict == "pass"
    mismatch = preflight._build_check(CPU_TORCH, report_with("nvidia"))
    assert mismatch.verdict == "warn" and "CPU build" in mismatch.detail and "CUDA build" in mismatch.fix
    unreachable = preflight._build_check(CUDA_TORCH | {"cuda_available": False}, report_with("nvidia"))
    assert unreachable.verdict == "warn" and "cannot reach" in unreachable.detail


@pytest.mark.parametrize(
    ("info", "device", "verdict"),
    [
        (CUDA_TORCH, "auto", "pass"),
        (CPU_TORCH, "auto", "warn"),
        (CPU_TORCH, "cuda", "fail"),
        (CUDA_TORCH, "cuda", "pass"),
        (CPU_TORCH, "cpu", "pass"),
        (CPU_TORCH, "mps", "fail"),
    ],
)
def test_device_check(info, device, verdict):
    assert preflight._device_check(info, device).verdict == verdict


def test_a_missing_torch_fails_with_the_install_command(project, tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # no torch in it
    python = str(venv / "bin" / "python")
    checks = preflight._interpreter_checks(python, preflight.probe_torch(python), {}, report_with())
    torch_check = next(c for c in checks if c.name == "torch")
    assert torch_check.verdict == "fail" and "ModuleNotFoundError" in torch_check.detail
    assert f"{python} -m pip install torch" in torch_check.fix


def test_the_experiment_interpreter_must_exist_inside_the_project(scripted):
    folder = write_experiment(scripted, "907-py", "scripted", {})
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[args]", 'python = ".venv/bin/python"\n[args]'))
    report, _, _ = run_preflight("907")
    check = next(c for c in report.checks if c.name == "interpreter")
    assert check.verdict == "fail" and ".venv/bin/python" in check.detail
    toml.write_text(toml.read_text().replace(".venv/bin/python", "../../usr/bin/python3"))
    with pytest.raises(Exception, match="outside the project"):
        run_preflight("907")


def test_a_runs_folder_that_cannot_be_made_fails(scripted, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot make a folder inside a file
    monkeypatch.setenv("TRAINGUARD_RUNS_DIR", str(blocker / "runs"))
    report, _, _ = run_preflight("901")
    output = next(c for c in report.checks if c.name == "output")
    assert output.verdict == "fail" and "TRAINGUARD_RUNS_DIR" in output.fix
    assert report.verdict == "fail"


USER_SPEC = """
name = "user_script"
description = "A user's script with an input folder and an output folder of its own."
command = ["{python}", "-c", "pass"]

[params.data_dir]
type = "path"
flag = "--data_dir"
default = "images/training_diverse"
must_exist = true
min_files = 3
file_glob = "**/*.png"
help = "Real images only."

[params.output_dir]
type = "path"
flag = "--output_dir"
default = "checkpoints/exp2"
output = true
help = "Where checkpoints go."

[params.resume]
type = "path"
flag = "--resume"
help = "Checkpoint to resume from."
"""


@pytest.fixture
def user_project(project):
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "experiments" / "trainers" / "user_script.toml").write_text(USER_SPEC)
    write_experiment(project, "960-user", "user_script", {})
    return project


def checks_of(experiment="960", overrides=None):
    report, _, _ = run_preflight(experiment, overrides)
    return {c.name: c for c in report.checks}


def test_an_input_folder_needs_enough_files_of_its_kind(user_project):
    data = user_project / "images" / "training_diverse" / "train"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"x")
    (data / "notes.txt").write_text("not an image")
    check = checks_of()["data:data_dir"]
    assert check.verdict == "fail" and "holds 1 files matching **/*.png; it needs at least 3" in check.detail
    for name in ("b.png", "c.png"):
        (data / name).write_bytes(b"x")
    assert checks_of()["data:data_dir"].verdict == "pass"


def test_a_used_output_folder_is_refused_with_a_fresh_name(user_project):
    (user_project / "images" / "training_diverse").mkdir(parents=True)
    assert checks_of()["output:output_dir"].verdict == "pass"
    used = user_project / "checkpoints" / "exp2"
    used.mkdir(parents=True)
    (used / "best.pt").write_bytes(b"weights")
    check = checks_of()["output:output_dir"]
    assert check.verdict == "fail" and "best.pt" in check.detail and "would overwrite" in check.detail
    assert "'checkpoints/exp2-2'" in check.fix and "resume" in check.fix
    assert checks_of(overrides={"output_dir": "checkpoints/exp2-2"})["output:output_dir"].verdict == "pass"


def test_output_and_input_roles_are_exclusive_and_for_paths_only():
    from pydantic import ValidationError

    from mcp_server.specs import ParamSpec

    with pytest.raises(ValidationError, match="either an input"):
        ParamSpec(type="path", flag="--x", help="h", must_exist=True, output=True)
    with pytest.raises(ValidationError, match="path parameters only"):
        ParamSpec(type="int", flag="--x", help="h", min_files=3)


# ---------------------------------------------------------------------------- a sample decodes


def write_pngs(folder, n, size=(24, 16)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (10 * i, 20, 30)).save(folder / f"img{i}.png")


@pytest.fixture
def decoding_project(user_project):
    spec = user_project / "experiments" / "trainers" / "user_script.toml"
    spec.write_text(spec.read_text().replace('file_glob = "**/*.png"', 'file_glob = "**/*.png"\ndecode = "image"'))
    return user_project


def test_a_sample_of_the_data_decodes(decoding_project):
    write_pngs(decoding_project / "images" / "training_diverse" / "train", 3)
    check = checks_of()["data:data_dir"]
    assert check.verdict == "pass" and "decodes: PNG 24x16 RGB" in check.detail


def test_a_sample_that_does_not_decode_fails(decoding_project):
    folder = decoding_project / "images" / "training_diverse"
    folder.mkdir(parents=True)
    for i in range(3):  # right names, wrong bytes: what an interrupted download leaves
        (folder / f"img{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    check = checks_of()["data:data_dir"]
    assert check.verdict == "fail" and "does not decode as image" in check.detail
    assert "Replace or remove the broken file" in check.fix


# ---------------------------------------------------------------------------- the experiment's venv


@pytest.fixture
def venv_experiment(scripted):
    folder = write_experiment(scripted, "908-venv", "scripted", {})
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text().replace("[args]", 'python = ".venv/bin/python"\n[args]'))
    return scripted


def test_the_named_venv_is_the_interpreter_used(venv_experiment):
    make_venv(venv_experiment / ".venv")
    report, _, _ = run_preflight("908")
    checks = {c.name: c for c in report.checks}
    assert checks["interpreter"].verdict == "pass", checks["interpreter"]
    assert f"of the venv {venv_experiment / '.venv'}" in checks["interpreter"].detail
    assert checks["torch"].verdict == "pass"  # torch imports through the venv
    assert report.python == str(venv_experiment / ".venv" / "bin" / "python")


def test_an_interpreter_that_is_not_a_venv_fails(venv_experiment):
    make_venv(venv_experiment / ".venv")
    (venv_experiment / ".venv" / "pyvenv.cfg").unlink()  # a copied or half-deleted venv
    check = next(c for c in run_preflight("908")[0].checks if c.name == "interpreter")
    assert check.verdict == "fail" and "is not in a venv" in check.detail and "python3 -m venv" in check.fix


def test_a_missing_venv_says_how_to_create_it(venv_experiment):
    check = next(c for c in run_preflight("908")[0].checks if c.name == "interpreter")
    assert check.verdict == "fail" and "Create the venv" in check.fix


# ---------------------------------------------------------------------------- AMD: HSA_OVERRIDE_GFX_VERSION

KFD = FIXTURES / "kfd"


def test_gfx_targets_are_read_from_the_kfd_topology():
    assert [(n.node, n.gfx) for n in gpu.amd_gfx_targets(KFD / "rx7800xt" / "nodes")] == [(1, "gfx1101")]
    assert [n.gfx for n in gpu.amd_gfx_targets(KFD / "mi210" / "nodes")] == ["gfx90a"]
    assert gpu.amd_gfx_targets(KFD / "absent") == []
    assert [gpu.gfx_name(v) for v in (110001, 110000, 100300, 90010)] == ["gfx1101", "gfx1100", "gfx1030", "gfx90a"]


@pytest.mark.parametrize(
    ("card", "spec_env", "environ", "verdict", "text"),
    [
        ("rx7800xt", {}, None, "fail", "needs HSA_OVERRIDE_GFX_VERSION=11.0.0"),
        ("rx7800xt", {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}, None, "pass", "from the trainer spec's [env]"),
        ("rx7800xt", {}, "11.0.0", "pass", "from the environment"),
        ("rx7800xt", {}, "10.3.0", "warn", "sets 10.3.0"),
        ("mi210", {}, None, "pass", "supported by ROCm as is"),
    ],
)
def test_amd_override_check(monkeypatch, card, spec_env, environ, verdict, text):
    if environ is None:
        monkeypatch.delenv("HSA_OVERRIDE_GFX_VERSION", raising=False)
    else:
        monkeypatch.setenv("HSA_OVERRIDE_GFX_VERSION", environ)
    check = preflight._amd_check(gpu.amd_gfx_targets(KFD / card / "nodes"), spec_env)
    assert check.verdict == verdict and text in check.detail
    if verdict == "fail":
        assert 'HSA_OVERRIDE_GFX_VERSION = "11.0.0"' in check.fix and "[env]" in check.fix


def test_preflight_fails_on_an_rx7800xt_without_the_override(scripted, monkeypatch):
    monkeypatch.setattr(gpu.amd, "KFD_TOPOLOGY", KFD / "rx7800xt" / "nodes")
    monkeypatch.delenv("HSA_OVERRIDE_GFX_VERSION", raising=False)
    report, _, _ = run_preflight("901")
    assert report.verdict == "fail" and any(c.name == "amd" and c.verdict == "fail" for c in report.checks)
    monkeypatch.setattr(gpu.amd, "KFD_TOPOLOGY", KFD / "absent")
    assert not any(c.name == "amd" for c in run_preflight("901")[0].checks)  # no AMD GPU: no check


def test_gpu_processes_are_named_ours_or_not(scripted):
    import os

    from mcp_server import paths, runs
    from mcp_server.rundir import open_run

    launched = runs.launch("902")
    run = open_run(paths.runs_root(scripted), launched.run_id)
    trainer_pid = wait_until(lambda: run.read_state().pid, what="the trainer's pid")
    devices = report_with("nvidia").devices
    devices[0].processes = [
        gpu.GpuProcess(pid=trainer_pid, used_memory_bytes=2**30, name="python"),
        gpu.GpuProcess(pid=os.getpid(), used_memory_bytes=None, name="someone-else"),
    ]
    backend = SimpleNamespace(name="fake", devices=lambda: devices)
    report = gpu.Sampler(paths.runs_root(scripted), backend, nested_pid_namespace=False).sample()  # as pre-flight
    check = preflight._gpu_check(report)
    assert check.verdict == "warn"
    assert f"pid {trainer_pid} (our run {launched.run_id}, 1.0 GiB)" in check.detail
    assert f"pid {os.getpid()} (someone-else)" in check.detail and "stop_run" in check.fix
    runs.stop(launched.run_id, grace_s=1.0)
    assert preflight._gpu_check(report_with("nvidia")).verdict == "pass"
