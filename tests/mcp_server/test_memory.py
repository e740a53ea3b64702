"""The memory estimate through the server's own paths: the estimate_memory tool, preflight's memory check
and `trainguard memory`, each running trainers/memprobe.py as a real subprocess (a few seconds each)."""

from __future__ import annotations

import textwrap

import pytest

from conftest import error, ok, write_experiment
from mcp_server import memory, probe
from mcp_server.cli import main

# Experiment 002 far past any host: the dense renderer holds B x K x H x W floats (64 x 16384 x 1024^2).
TOO_BIG = {"renderer": "dense", "image_size": 1024, "num_gaussians": 16384, "batch_size": 64}
# Experiment 007 shrunk, and pinned to the CPU so the target is host RAM on any machine.
SMALL_AE = {"base_channels": 16, "image_size": 32, "device": "cpu"}

RAISER_SPEC = """
name = "raiser"
description = "A user's own script whose memory_step raises (tests)."
command = ["{python}", "{trainer_dir}/raiser.py"]

[params.batch_size]
type = "int"
flag = "--batch-size"
default = 8
min = 1
help = "Samples per step."

[memory]
script = "{trainer_dir}/raiser.py"
"""

RAISER = """
import argparse


def memory_step(argv, batch_size, device):
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int)
    p.parse_args(argv)
    raise RuntimeError("boom: this step cannot be built")
"""


@pytest.fixture(autouse=True)
def fresh_probe_cache(monkeypatch: pytest.MonkeyPatch):
    """Each test runs its own probe: the cache is keyed by script and flags, not by project."""
    monkeypatch.setattr(probe, "_cache", {})


def memory_check(report: dict) -> dict:
    (check,) = [c for c in report["checks"] if c["name"] == "memory"]
    return check


def test_estimate_memory_tool_returns_the_table_for_a_bundled_experiment(project):
    est = ok("estimate_memory", {"experiment": "7", "overrides": SMALL_AE})
    assert est["experiment"] == "007-ae-baseline" and est["batch_param"] == "batch_size" and est["batch_size"] == 4
    assert est["method"] == "fake" and est["note"] is None
    assert set(est["traced_bytes"]) == {"4", "8"} and 0 < est["traced_bytes"]["4"] < est["traced_bytes"]["8"]
    assert est["need_bytes"] > est["tensor_bytes"] > 0
    assert est["tensor_bytes"] == est["traced_bytes"]["4"] == est["fixed_bytes"] + 4 * est["per_sample_bytes"]
    assert abs(est["need_bytes"] - (est["tensor_bytes"] + est["margin_bytes"] + est["context_bytes"])) <= 1
    assert est["target"] == "host RAM (CPU training)" and est["context_bytes"] == memory.CONTEXT_BYTES["cpu"]
    assert est["verdict"] == "pass" and est["fix"] is None and "batch_size=4" in est["detail"]
    rows = {r["batch_size"]: r for r in est["table"]}
    assert rows[4]["need_bytes"] == est["need_bytes"] and rows[4]["fits"] is True
    needs = [r["need_bytes"] for r in est["table"]]
    assert needs == sorted(needs) and len(set(needs)) == len(needs)  # grows with the batch
    assert est["largest_batch"] > 4 and est["largest_batch"] in rows


def test_a_config_far_too_big_for_the_host_fails_with_a_fix(project):
    est = ok("estimate_memory", {"experiment": "2", "overrides": TOO_BIG})
    assert est["method"] == "fake" and est["batch_size"] == 64
    assert est["need_bytes"] > 1000 * 2**30 and est["need_bytes"] > est["free_bytes"]
    assert est["verdict"] == "fail" and est["largest_batch"] == 0
    assert "batch_size" in est["fix"] or "Shrink" in est["fix"]
    assert "not even batch 1 fits" in est["detail"]
    assert est["table"] and all(r["fits"] is False for r in est["table"])

    report = ok("preflight", {"experiment": "2", "overrides": TOO_BIG})
    check = memory_check(report)
    need = est["detail"].split(", but")[0]  # the free RAM after it moves between the two calls
    assert check["verdict"] == "fail" and check["detail"].startswith(need) and check["fix"] == est["fix"]
    assert report["verdict"] == "fail" and "memory: needs ~" in report["summary"]


def test_a_trainer_without_a_memory_table_passes_preflight_and_the_tool_says_what_to_add(scripted):
    check = memory_check(ok("preflight", {"experiment": "901"}))
    assert check["verdict"] == "pass"
    assert check["detail"].startswith("no estimate") and "[memory] table" in check["detail"]
    text = error("estimate_memory", {"experiment": "901"})
    assert "trainer 'scripted' has no [memory] table; add one" in text


def test_a_memory_function_that_raises_is_a_preflight_warning_with_its_error(project):
    trainers = project / "experiments" / "trainers"
    trainers.mkdir(parents=True)
    (trainers / "raiser.toml").write_text(textwrap.dedent(RAISER_SPEC))
    (trainers / "raiser.py").write_text(textwrap.dedent(RAISER))
    write_experiment(project, "921-raiser", "raiser", {"batch_size": 8})

    check = memory_check(ok("preflight", {"experiment": "921"}))
    assert check["verdict"] == "warn"
    assert "memory probe of raiser.py:memory_step failed" in check["detail"]
    assert "RuntimeError: boom: this step cannot be built" in check["detail"]
    assert "memory_step" in check["fix"]


def test_trainguard_memory_prints_the_table_and_exits_1_when_it_does_not_fit(project, capsys):
    sets = [arg for k, v in TOO_BIG.items() for arg in ("--set", f"{k}={v}")]
    assert main(["memory", "2", *sets]) == 1
    out = capsys.readouterr().out
    assert "Memory for 002-gauss-standard on host RAM (CPU training) (fake trace" in out
    assert "[FAIL] needs ~" in out and "fix: Shrink the model" in out
    assert "  batch_size        need  fits" in out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [r[0] for r in rows] == ["16", "32", "64", "128", "256"]
    assert all(r[1:] == [r[1], "GiB", "no"] and float(r[1]) > 100 for r in rows)


def test_trainguard_memory_exits_0_when_it_fits(project, capsys):
    sets = [arg for k, v in SMALL_AE.items() for arg in ("--set", f"{k}={v}")]
    assert main(["memory", "7", *sets]) == 0
    out = capsys.readouterr().out
    assert "[ok  ] needs ~" in out and "fix:" not in out
    assert any(line.split()[:1] == ["4"] and line.split()[-1] == "yes" for line in out.splitlines())


def test_a_small_batch_still_extrapolates_a_cost_per_sample(project):
    """PPO's worlds share fixed 1024 x 49 lookup tables (~1.2 MB) that outweigh a rollout of a few envs.
    The real-CPU fallback measures n_envs // 8 and // 4: for n_envs = 16 that is 2 and 4 envs, both
    under the fixed tables, so the two peaks are equal. The estimate must not conclude that the
    memory does not grow with n_envs (at 192 it grows ~135 kB per env)."""
    est = ok("estimate_memory", {"experiment": "11", "overrides": {"n_envs": 16}})
    assert est["method"] == "real-cpu"
    rows = {r["batch_size"]: r["need_bytes"] for r in est["table"]}
    assert est["per_sample_bytes"] > 0, f"traced {est['traced_bytes']}: flat, so per-sample is 0"
    assert rows[64] > rows[16]
    assert est["largest_batch"] < 1_000_000  # n_envs' max: 'everything fits' is wrong


def test_the_estimate_follows_the_data_the_run_would_hold(project):
    """The autoencoder keeps its images on the device as uint8; after prepare_data (or any new images)
    the estimate must count them, even within the probe cache's lifetime."""
    before = ok("estimate_memory", {"experiment": "7", "overrides": SMALL_AE})
    data = project / "images" / "training_diverse"
    for split, n in (("train", 400), ("val", 100)):
        (data / split).mkdir(parents=True)
        for i in range(n):
            (data / split / f"{i:04d}.png").touch()  # memory_step only counts the files
    after = ok("estimate_memory", {"experiment": "7", "overrides": SMALL_AE})
    resident = (round(0.05 * 400) + 100) * 3 * 32 * 32  # quick_search: 5% of train, all of val, uint8
    assert after["tensor_bytes"] - before["tensor_bytes"] == resident
