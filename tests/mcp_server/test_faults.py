"""Fault injection with real processes: each fault is detected and classified, the run's state is
consistent, nothing is lost (a completed checkpoint loads, the metrics up to the fault read
back) and no process of the run is left alive.

The trainer is a user's own script (tests/fixtures/scripted_trainer.py) whose flags act out
each fault; `diagnose_run` must name it from what the run left behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from conftest import wait_until, write_experiment
from mcp_server import paths, procs, runs
from mcp_server.curves.load import loaded
from mcp_server.curves.stats import metric_stats
from mcp_server.rundir import TERMINAL, open_run


def experiment(project: Path, name: str, args: dict, watchdog: str = "") -> str:
    folder = write_experiment(project, name, "scripted", args)
    if watchdog:
        toml = folder / "experiment.toml"
        toml.write_text(toml.read_text() + "\n[watchdog]\n" + watchdog + "\n")
    return name[:3]


def finish(run_id: str, timeout: float = 90.0):
    """The run's status once it has ended."""
    return wait_until(lambda: (st := runs.status(run_id)).status in TERMINAL and st, timeout, f"{run_id} to end")


def assert_clean(run_id: str) -> None:
    """Terminal state with its end time, no process of the run alive, the metrics readable."""
    run = open_run(paths.runs_root(), run_id)
    state = run.read_state()
    assert state.status in TERMINAL and state.finished_at is not None
    # The supervisor exits right after it writes the terminal state.
    wait_until(lambda: not procs.is_alive(state.supervisor_pid, state.supervisor_started), 10.0, "supervisor exit")
    assert state.pgid is None or procs.group_members(state.pgid) == [], "a process of the run is alive"


def logged_steps(run_id: str) -> list[int] | None:
    run = open_run(paths.runs_root(), run_id)
    with loaded(run.path) as found:
        series = found.curves.series.get("train/loss")
        if series is None:
            return None
        loss = metric_stats(series)
    return [loss.first.step, loss.last.step, loss.count]


def test_trainer_exception_is_a_crash_with_its_traceback(scripted):
    result = runs.launch(experiment(scripted, "931-exc", {"steps": 10, "fail_at": 4}))
    st = finish(result.run_id)
    assert st.status == "failed" and st.exit_code == 1
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "crash" and any("RuntimeError: scripted failure" in e.text for e in d.evidence)
    assert logged_steps(result.run_id) == [1, 3, 3]  # every step before the fault reads back
    assert_clean(result.run_id)


def test_sigkill_from_outside_is_classified_as_the_oom_killer(scripted):
    result = runs.launch(experiment(scripted, "932-kill", {"steps": 100000, "interval": 0.02}))
    state = wait_until(
        lambda: (s := runs.refresh(open_run(paths.runs_root(), result.run_id))).pid and s, what="trainer pid"
    )
    wait_until(lambda: logged_steps(result.run_id), what="a first metric")
    os.kill(state.pid, signal.SIGKILL)  # not a stop_run: what the kernel's OOM killer does
    st = finish(result.run_id)
    assert st.status == "failed" and st.signal == signal.SIGKILL
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "killed_by_kernel_oom" and "dmesg" in " ".join(d.remedies)
    assert_clean(result.run_id)


def test_memory_exhaustion_under_an_address_space_limit(scripted):
    args = {"steps": 10, "limit_as_mb": 1500, "alloc_at": 3, "alloc_mb": 4000}
    result = runs.launch(experiment(scripted, "933-mem", args))
    st = finish(result.run_id)
    assert st.status == "failed"
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "host_out_of_memory" and any("MemoryError" in e.text for e in d.evidence)
    assert logged_steps(result.run_id) == [1, 2, 2]
    assert_clean(result.run_id)


def test_nan_loss_is_stopped_by_the_watchdog(scripted):
    args = {"steps": 100000, "interval": 0.02, "nan_at": 5}
    result = runs.launch(experiment(scripted, "934-nan", args, 'nonfinite = "stop"'))
    st = finish(result.run_id)
    assert st.status == "failed" and "stopped by the watchdog" in st.failure and "train/loss is nan" in st.failure
    assert [e["kind"] for e in st.events] == ["nonfinite"]
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "nonfinite_loss" and "watchdog_nonfinite" in d.also
    assert any("train/loss = nan at step 5" in e.text for e in d.evidence)
    assert (paths.runs_root() / result.run_id / "checkpoints" / "last.json").is_file()  # it checkpointed on SIGTERM
    assert_clean(result.run_id)


def test_a_hang_is_stopped_as_a_stall(scripted):
    args = {"steps": 100000, "interval": 0.05, "hang_at": 10}
    result = runs.launch(experiment(scripted, "935-hang", args, 'stall = "stop"\nstall_min_s = 1.5\nstall_factor = 3'))
    st = finish(result.run_id)
    assert st.status == "failed" and [e["kind"] for e in st.events] == ["stall"]
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "stalled" and "no new metric" in d.evidence[0].text
    assert logged_steps(result.run_id)[1] == 9
    assert_clean(result.run_id)


def test_disk_full_under_a_file_size_limit(scripted):
    args = {"steps": 10, "limit_fsize_mb": 2, "write_at": 3, "write_mb": 8}
    result = runs.launch(experiment(scripted, "936-disk", args))
    st = finish(result.run_id)
    assert st.status == "failed"
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "disk_full" and any("File too large" in e.text for e in d.evidence)
    assert_clean(result.run_id)


def test_a_kill_during_checkpoint_writes_leaves_the_last_complete_checkpoint(scripted):
    result = runs.launch(experiment(scripted, "937-ckpt", {"steps": 100000, "ckpt_mb": 16}))
    ckpt = paths.runs_root() / result.run_id / "checkpoints" / "ckpt.bin"
    wait_until(lambda: ckpt.exists(), what="a first checkpoint")
    tmp = ckpt.with_name("ckpt.bin.tmp")
    wait_until(lambda: tmp.exists(), what="a checkpoint being written")
    state = runs.refresh(open_run(paths.runs_root(), result.run_id))
    os.killpg(state.pgid, signal.SIGKILL)  # most likely mid-write: a write takes most of each step
    finish(result.run_id)
    data = ckpt.read_bytes()
    step, digest, body = int.from_bytes(data[:8], "little"), data[8:40], data[40:]
    assert len(body) == 16 * 2**20 and hashlib.sha256(body).digest() == digest, "the checkpoint is torn"
    assert step >= 1
    assert_clean(result.run_id)


def test_a_malformed_metrics_line_is_skipped_and_the_run_succeeds(scripted):
    result = runs.launch(experiment(scripted, "938-torn", {"steps": 6, "malformed_at": 3}))
    st = finish(result.run_id)
    assert st.status == "succeeded"
    assert runs.summary(result.run_id)[1].skipped_lines == 1
    assert logged_steps(result.run_id) == [1, 6, 6]
    assert runs.diagnose_run(result.run_id).failure_class == "none"
    assert_clean(result.run_id)


@pytest.mark.parametrize("stream", ["stderr", "stdout"])
def test_tail_log_is_bounded_and_filtered(scripted, stream):
    result = runs.launch(experiment(scripted, "939-tail", {"steps": 30, "fail_at": 25}))
    finish(result.run_id)
    if stream == "stdout":
        out = runs.tail_log(result.run_id, "stdout", lines=5, pattern=r"loss 0\.0[45]")
        assert out.lines == [
            "step 20 loss 0.05",
            "step 21 loss 0.047619047619047616",
            "step 22 loss 0.045454545454545456",
            "step 23 loss 0.043478260869565216",
            "step 24 loss 0.041666666666666664",
        ]
        assert out.matched == 8 and out.truncated  # steps 17-24 match (1/17 = 0.0588); the last 5 are kept
    else:
        out = runs.tail_log(result.run_id, "stderr", lines=1)
        assert out.lines == ["RuntimeError: scripted failure"]


def test_wait_run_reports_progress_and_returns_on_the_end_or_an_event(scripted):
    import anyio
    from mcp import Client

    from mcp_server.server import mcp

    nan_id = runs.launch(
        experiment(scripted, "941-nanwarn", {"steps": 100000, "interval": 0.05, "nan_at": 60}, 'nonfinite = "warn"')
    ).run_id
    long_id = runs.launch(experiment(scripted, "940-wait", {"steps": 120, "interval": 0.05})).run_id
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def scenario():
        async with Client(mcp) as client:
            timeout = await client.call_tool(
                "wait_run", {"run_id": nan_id, "timeout_seconds": 0.5, "poll_seconds": 0.1}
            )
            assert timeout.structured_content["reason"] == "timeout"  # its NaN comes at step 60, about 3 s in
            event = await client.call_tool("wait_run", {"run_id": nan_id, "timeout_seconds": 60, "poll_seconds": 0.1})
            done = await client.call_tool(
                "wait_run",
                {"run_id": long_id, "timeout_seconds": 60, "poll_seconds": 0.1},
                progress_callback=on_progress,
            )
            bad = await client.call_tool("wait_run", {"run_id": long_id, "timeout_seconds": 99999})
            return done.structured_content, event.structured_content, bad

    done, event, bad = anyio.run(scenario)
    assert done["reason"] == "finished" and done["run"]["status"] == "succeeded"
    assert progress and all(total is None for _, total, _ in progress)  # the scripted spec has no epochs
    assert any("running" in message for _, _, message in progress)
    assert event["reason"] == "event" and event["new_events"][0]["kind"] == "nonfinite"
    assert event["run"]["status"] == "running"  # a warning does not stop the run
    assert bad.is_error and "timeout_seconds is 99999; pass more than 0 and at most 3600" in bad.content[0].text
    runs.stop(nan_id, grace_s=1.0)
    assert_clean(nan_id)


FAULTY = """
import sys
case = sys.argv[sys.argv.index("--case") + 1]
if case == "dtype":  # a real torch error: float indices (seed 002's edge_index must be long)
    import torch
    torch.nn.functional.embedding(torch.tensor([0.5]), torch.zeros(3, 2))
elif case == "import":
    import trainguard_no_such_module  # noqa: F401
elif case == "missing":
    open("data/never_made/train.pt", "rb")
elif case == "cuda_oom":  # the GPU-only ones: the exact text torch prints, recorded (no GPU here)
    sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                     "capacity of 15.98 GiB of which 1.02 GiB is free.\\n")
    sys.exit(1)
elif case == "hip_gfx":
    sys.stderr.write("RuntimeError: HIP error: invalid device function\\nHIP kernel errors might be asynchronously "
                     "reported at some other API call\\n")
    sys.exit(1)
elif case == "device":
    sys.stderr.write("RuntimeError: Expected all tensors to be on the same device, but found at least two devices, "
                     "cuda:0 and cpu!\\n")
    sys.exit(1)
"""

FAULTY_SPEC = """
name = "faulty"
description = "Fails in a chosen way."
command = ["{python}", "{project_dir}/scripts/faulty.py"]

[params.case]
type = "str"
flag = "--case"
choices = ["dtype", "import", "missing", "cuda_oom", "hip_gfx", "device"]
help = "How to fail."
"""


@pytest.mark.parametrize(
    ("case", "failure_class", "evidence"),
    [
        ("dtype", "wrong_dtype", "scalar types: Long, Int"),
        ("import", "import_error", "No module named 'trainguard_no_such_module'"),
        ("missing", "missing_file", "No such file or directory"),
        ("cuda_oom", "gpu_out_of_memory", "CUDA out of memory"),
        ("hip_gfx", "hip_missing_override", "HSA_OVERRIDE_GFX_VERSION is not in the run's environment"),
        ("device", "device_mismatch", "Expected all tensors to be on the same device"),
    ],
)
def test_diagnosis_names_each_failure_with_its_evidence_and_remedy(project, case, failure_class, evidence):
    (project / "scripts").mkdir(exist_ok=True)
    (project / "scripts" / "faulty.py").write_text(FAULTY)
    (project / "experiments" / "trainers").mkdir(parents=True, exist_ok=True)
    (project / "experiments" / "trainers" / "faulty.toml").write_text(FAULTY_SPEC)
    write_experiment(project, "942-faulty", "faulty", {"case": case})
    result = runs.launch("942")
    assert finish(result.run_id).status == "failed"
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == failure_class, d
    assert any(evidence in e.text for e in d.evidence), d.evidence
    assert d.remedies
    if case == "dtype":
        assert "torch.long" in " ".join(d.remedies)
    if case == "cuda_oom":
        assert "estimate_memory" in d.remedies[0]
    assert_clean(result.run_id)


def test_a_run_past_its_time_budget_is_stopped_as_a_timeout(scripted):
    result = runs.launch(experiment(scripted, "943-budget", LONG_STEPS, "max_runtime_s = 2"))
    st = finish(result.run_id)
    assert st.status == "failed" and [e["kind"] for e in st.events] == ["timeout"]
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "timeout" and "past its budget of 2 s" in d.evidence[0].text
    assert (paths.runs_root() / result.run_id / "checkpoints" / "last.json").is_file()  # SIGTERM let it save
    assert_clean(result.run_id)


LONG_STEPS = {"steps": 100000, "interval": 0.05}


@pytest.mark.gpu
def test_the_gpu_memory_watchdog_stops_a_real_gpu_run(project):
    """On a machine with an NVIDIA GPU: a TRM run on cuda passes a tiny GPU-memory limit, the
    supervisor's NVML sample sees it, and the watchdog stops the run."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver on this machine")
    folder = write_experiment(
        project, "944-gpu-limit", "trm_nav", {"epochs": 10000, "patience": 10000, "num_train": 20000, "device": "cuda"}
    )
    toml = folder / "experiment.toml"
    toml.write_text(toml.read_text() + '\n[watchdog]\ngpu_memory_gib = 0.05\ngpu_memory = "stop"\n')
    result = runs.launch("944")
    st = finish(result.run_id, timeout=180)
    assert st.status == "failed" and [e["kind"] for e in st.events] == ["gpu_memory"], st
    assert_clean(result.run_id)
