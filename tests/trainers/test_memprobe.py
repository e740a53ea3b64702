"""trainers/memprobe.py: the peak-memory tracker, fake against real traces, the real-CPU fallback and its CLI.

Real torch, tiny configs: every step here runs in well under a second on one thread.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainers import memprobe
from trainers.memprobe import LimitExceeded, PeakMemory, load_entry, probe, real_fallback_batches, step_peak

TRAINERS = Path(memprobe.__file__).resolve().parent
MEMPROBE = TRAINERS / "memprobe.py"

# nn.Linear(256, 256) + Adam, its input width set by --width: the hand-countable step.
LINEAR = """
import argparse

import torch
from torch import nn


def memory_step(argv, batch_size, device):
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=256)
    args = p.parse_args(argv)
    model = nn.Linear(args.width, 256).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, args.width, device=device)

    def step():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    return step
"""

# h[h > 0] has a size that depends on the values: fake tensors cannot trace it.
DATA_DEPENDENT = """
import torch


def memory_step(argv, batch_size, device):
    w = torch.nn.Parameter(torch.randn(64, 64, device=device))
    opt = torch.optim.SGD([w], lr=0.1)
    x = torch.randn(batch_size, 64, device=device)

    def step():
        opt.zero_grad()
        h = x @ w
        h[h > 0].sum().backward()
        opt.step()

    return step
"""

NO_FUNCTION = """
def train_step():
    return None
"""

TINY_TRM = ["--dim", "16", "--depth", "1", "--num-train", "100", "--num-test", "20"]
TINY_GAUSS = ["--experiment", "2", "--num_gaussians", "16", "--image_size", "32", "--width", "8"]


def tiny_ae(tmp_path: Path) -> list[str]:
    return ["--base-channels", "8", "--image-size", "32", "--data-dir", str(tmp_path / "no-images")]


@pytest.fixture(autouse=True)
def one_thread_and_clean_imports(monkeypatch: pytest.MonkeyPatch):
    """Real steps on one thread (2-core CI), and load_entry's sys.path/sys.modules entries undone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    torch.set_num_threads(threads)
    for name in [n for n in sys.modules if n.startswith("_trainguard_memprobe_")]:
        del sys.modules[name]


def write_script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = subprocess.run(
        [sys.executable, str(MEMPROBE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr
    return out, json.loads(lines[-1])


# ---------------------------------------------------------------------------- PeakMemory


def test_peak_memory_counts_storages_once_and_frees_deleted_tensors():
    before = torch.empty(10_000)  # made outside the mode: not counted
    with PeakMemory() as mem:
        a = torch.empty(1000)  # 4000 bytes
        view = a.view(10, 100)  # same storage
        a.add_(1.0)  # in place: same storage
        assert mem.current == 4000 and mem.live and len(mem.live) == 1
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        assert mem.current == 8000
        del a, view
        gc.collect()
        assert mem.current == 4000, "a deleted tensor's bytes must leave `current`"
        c = before + 1  # a new 40000-byte result is counted, its input is not
        assert mem.current == 44_000
        del b, c
        gc.collect()
        assert mem.current == 0 and mem.live == {}
    assert mem.peak == 44_000


def test_peak_memory_limit_raises_past_the_limit():
    with pytest.raises(LimitExceeded) as info, PeakMemory(limit=1000) as mem:
        small = torch.empty(100)  # 400 bytes: under
        assert mem.current == 400
        torch.empty(1000)  # 4400 in all: over
    assert info.value.args[0] == 4400 and small.numel() == 100


def test_real_fallback_batches_are_a_quarter_of_the_smallest_and_the_smallest():
    assert real_fallback_batches([64, 128]) == [16, 64]
    assert real_fallback_batches([32, 16]) == [4, 16]
    assert real_fallback_batches([4, 8]) == [1, 4]
    assert real_fallback_batches([1, 2]) == [1, 2]


# ---------------------------------------------------------------------------- fake against real


# On torch 2.13's CPU, F.mse_loss returns its 0-d result in an input-sized storage, which the fake
# kernel (4 bytes) does not; the autoencoder's real peak is one prediction-sized buffer higher
# (5-8%, covered by the estimate's 10% allocator margin; bench/bench_memory.py measures it).
TOLERANCE = {"linear-adam": 0.02, "trm_nav": 0.02, "autoencoder": 0.10}


@pytest.mark.parametrize("case", ["linear-adam", "trm_nav", "autoencoder"])
def test_fake_trace_agrees_with_a_real_trace_and_grows_with_the_batch(tmp_path, case):
    script, argv = {
        "linear-adam": (write_script(tmp_path, "linear.py", LINEAR), []),
        "trm_nav": (TRAINERS / "trm_nav.py", TINY_TRM),
        "autoencoder": (TRAINERS / "autoencoder.py", tiny_ae(tmp_path)),
    }[case]
    entry = load_entry(script, "memory_step")
    fake = {b: step_peak(entry, argv, b, fake=True) for b in (4, 16)}
    real = {b: step_peak(entry, argv, b, fake=False) for b in (4, 16)}
    for b in (4, 16):
        assert real[b] > 0 and abs(fake[b] - real[b]) <= TOLERANCE[case] * real[b], (
            f"batch {b}: fake trace {fake[b]} B vs real tensors {real[b]} B ({fake[b] / real[b] - 1:+.1%})"
        )
    assert fake[16] > fake[4] and real[16] > real[4]


@pytest.mark.parametrize("fake", [True, False], ids=["fake", "real"])
def test_peak_holds_at_least_params_grads_and_both_adam_states(tmp_path, fake):
    """nn.Linear(256, 256) + Adam: weights, gradients, exp_avg and exp_avg_sq are alive together after
    the first step, plus the input batch; a tracker that misses any of them stays under this bound."""
    entry = load_entry(write_script(tmp_path, "linear.py", LINEAR), "memory_step")
    param_bytes = (256 * 256 + 256) * 4
    batch_bytes = 8 * 256 * 4
    peak = step_peak(entry, [], 8, fake=fake)
    assert peak >= 4 * param_bytes + batch_bytes
    # Adam updates in place (lerp_, mul_, addcmul_, addcdiv_): counting each of those as a new
    # storage would land far above this.
    assert peak <= 8 * param_bytes


# ---------------------------------------------------------------------------- real-CPU fallback


def test_a_data_dependent_shape_falls_back_to_real_cpu_steps(tmp_path):
    script = write_script(tmp_path, "masked.py", DATA_DEPENDENT)
    result = probe(script, "memory_step", [], [16, 32], real_limit=None)
    assert result["method"] == "real-cpu"
    assert result["fallback_reason"].startswith("DynamicOutputShapeException")
    assert "nonzero" in result["fallback_reason"]
    peaks = result["peaks"]
    assert list(peaks) == ["4", "16"] == [str(b) for b in real_fallback_batches([16, 32])]
    w_bytes = 64 * 64 * 4
    assert peaks["16"] > peaks["4"] >= 2 * w_bytes  # the weight and its gradient, at least
    assert result["exceeded"] is None and result["seconds"] >= 0


def test_a_real_step_past_the_limit_reports_exceeded(tmp_path):
    script = write_script(tmp_path, "masked.py", DATA_DEPENDENT)
    result = probe(script, "memory_step", [], [16, 32], real_limit=1000)
    assert result["method"] == "real-cpu"
    assert result["exceeded"] is not None
    assert result["exceeded"]["batch_size"] == 4 and result["exceeded"]["bytes"] > 1000
    assert result["peaks"] == {}  # stopped at the first batch: nothing bigger is tried


def test_a_fake_step_ignores_the_real_limit(tmp_path):
    result = probe(write_script(tmp_path, "linear.py", LINEAR), "memory_step", [], [4, 8], real_limit=1000)
    assert result["method"] == "fake" and result["exceeded"] is None
    assert result["peaks"]["8"] > result["peaks"]["4"] > 1000


# ---------------------------------------------------------------------------- CLI


def test_cli_prints_peaks_for_the_requested_batch_sizes_and_passes_the_trainer_flags(tmp_path):
    script = write_script(tmp_path, "linear.py", LINEAR)
    out, result = run_cli(str(script), "--batch-sizes", "4", "8", "--", "--width", "32")
    assert out.returncode == 0, out.stderr
    assert result["method"] == "fake" and result["exceeded"] is None and result["fallback_reason"] is None
    assert set(result["peaks"]) == {"4", "8"}
    entry = load_entry(script, "memory_step")
    assert result["peaks"] == {str(b): step_peak(entry, ["--width", "32"], b, fake=True) for b in (4, 8)}
    assert result["peaks"]["4"] < step_peak(entry, [], 4, fake=True)  # --width 32 reached the script


def test_cli_names_a_missing_function_and_exits_1(tmp_path):
    script = write_script(tmp_path, "nofunc.py", NO_FUNCTION)
    out, result = run_cli(str(script), "--function", "memory_step", "--batch-sizes", "4", "8")
    assert out.returncode == 1
    assert set(result) == {"error"}
    assert "AttributeError" in result["error"] and "nofunc.py defines no function memory_step" in result["error"]


def test_cli_reports_a_flag_the_trainer_rejects_and_exits_1(tmp_path):
    script = write_script(tmp_path, "linear.py", LINEAR)
    out, result = run_cli(str(script), "--batch-sizes", "4", "8", "--", "--bogus", "3")
    assert out.returncode == 1
    assert set(result) == {"error"} and result["error"].startswith("SystemExit: 2")
    assert "unrecognized arguments: --bogus 3" in out.stderr


# ---------------------------------------------------------------------------- bundled trainers


@pytest.mark.parametrize(
    ("trainer", "argv", "batch_sizes", "method"),
    [
        ("trm_nav", TINY_TRM, [8, 16], "fake"),
        ("autoencoder", None, [8, 16], "fake"),
        ("gauss_decoder", TINY_GAUSS, [8, 16], "real-cpu"),  # the tile renderer's size depends on the data
        ("gauss_decoder", [*TINY_GAUSS, "--renderer", "dense"], [8, 16], "fake"),
        ("ppo_gridworld", ["--mode", "ground_truth"], [64, 128], "real-cpu"),  # nonzero in the env step
    ],
    ids=["trm_nav", "autoencoder", "gauss_tile", "gauss_dense", "ppo_gridworld"],
)
def test_every_bundled_trainer_memory_step_traces_or_falls_back(tmp_path, trainer, argv, batch_sizes, method):
    argv = tiny_ae(tmp_path) if argv is None else argv
    result = probe(TRAINERS / f"{trainer}.py", "memory_step", argv, batch_sizes, real_limit=2**30)
    assert result["method"] == method, result["fallback_reason"]
    assert (result["fallback_reason"] is None) == (method == "fake")
    expected = batch_sizes if method == "fake" else real_fallback_batches(batch_sizes)
    assert list(result["peaks"]) == [str(b) for b in expected]
    small, big = (result["peaks"][str(b)] for b in expected)
    assert 0 < small < big
    assert result["exceeded"] is None
