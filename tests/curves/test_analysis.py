"""Labelled synthetic curves for every diagnosis rule, clean curves that must raise nothing, and
the size bounds of the statistics (mcp_server/curves/stats.py, findings.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcp_server import registry
from mcp_server.curves.findings import MAX_FINDINGS, Finding, diagnose
from mcp_server.curves.load import loaded
from mcp_server.curves.names import direction_of, pair_series
from mcp_server.curves.stats import SPARK_CHARS, metric_stats
from mcp_server.curves.store import Curves

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "curves"
# The bundled TRM trainer's own remedies, as a launched run of it carries them (manifest.remedies).
TRM_REMEDIES = registry.load_trainer("trm_nav", Path("/nonexistent-project")).remedies


def add(curves: Curves, name: str, values, steps=None, epochs=None, times=None) -> None:
    def col(x):
        return None if x is None else np.asarray(x, dtype=float).tolist()

    curves.get(name).extend(col(values), col(steps), col(epochs), col(times))


def decay(n: int, seed: int, noise: float = 0.1, start: float = 2.3, tau_frac: float = 0.25) -> np.ndarray:
    """A loss falling exponentially (time constant tau_frac of the run) with multiplicative noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return start * np.exp(-t / (tau_frac * n)) * np.exp(rng.normal(0.0, noise, n))


def rules(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


def by(findings: list[Finding], rule: str, metric: str | None = None) -> Finding:
    hits = [f for f in findings if f.rule == rule and (metric is None or f.metric == metric)]
    assert hits, f"no {rule} finding for {metric}: {[f.model_dump() for f in findings]}"
    return hits[0]


# ---------------------------------------------------------------------------------------------
# metric_stats
# ---------------------------------------------------------------------------------------------


def test_stats_first_last_best_first_time_reached_with_epoch():
    c = Curves()
    add(c, "val/acc", [0.3, 0.8, 0.9, 0.85, 0.9], steps=[10, 20, 30, 40, 50], epochs=[1, 2, 3, 4, 5])
    s = metric_stats(c.series["val/acc"], "max")
    assert s.direction == "max" and s.count == 5
    assert (s.first.value, s.first.step, s.first.epoch) == (0.3, 10, 1)
    assert (s.last.value, s.last.step, s.last.epoch) == (0.9, 50, 5)
    assert (s.best.value, s.best.step, s.best.epoch) == (0.9, 30, 3)  # the first time 0.9 was reached
    assert s.nonfinite == 0 and s.first_nonfinite_step is None
    assert metric_stats(c.series["val/acc"]).direction == "max"  # guessed from the name


def test_stats_nonfinite_counted_and_located_and_excluded():
    c = Curves()
    add(c, "train/loss", [1.0, 0.5, float("nan"), 0.25, float("inf")], steps=[0, 1, 2, 3, 4])
    s = metric_stats(c.series["train/loss"], "min")
    assert s.nonfinite == 2 and s.first_nonfinite_step == 2
    assert s.best.value == 0.25 and s.last.value is None and s.tail_median == 0.25
    assert len(s.spark) == 5 and s.spark[2] == "·" and s.spark_range == (0.25, 1.0)


def test_stats_slope_in_decades_per_1k_steps_throughput_and_eta():
    c = Curves()
    steps = np.arange(0, 20_000, 10.0)
    add(c, "train/loss", 3.0 * 10 ** (-0.12 * steps / 1000), steps=steps, times=100 + steps / 50)
    s = metric_stats(c.series["train/loss"], "min")
    assert s.slope_scale == "log10" and s.slope_per_1k_steps == pytest.approx(-0.12, rel=1e-3)
    assert s.steps_per_second == pytest.approx(50)
    assert s.eta_seconds(29_990) == pytest.approx(200)
    assert s.tail_median == round(s.tail_median, 10) and len(repr(s.tail_median)) <= 10  # 4 significant figures
    acc = Curves()
    add(acc, "acc", np.linspace(0.5, 0.9, 101), steps=np.arange(101) * 100.0)
    a = metric_stats(acc.series["acc"], "max")
    assert a.slope_scale == "linear" and a.slope_per_1k_steps == pytest.approx(0.04, rel=1e-3)
    assert a.steps_per_second is None and a.eta_seconds(1e6) is None


def test_stats_empty_and_all_nan_series():
    c = Curves()
    c.get("empty")
    add(c, "loss", [float("nan")] * 4)
    assert metric_stats(c.series["empty"]).count == 0
    s = metric_stats(c.series["loss"])
    assert s.best is None and s.nonfinite == 4 and s.spark == "····" and s.spark_range is None


def test_sparkline_shows_a_single_spike_in_a_million_points():
    n = 1_000_000
    loss = decay(n, seed=3, noise=0.05)
    loss[500_000] *= 20
    c = Curves()
    add(c, "train/loss", loss)
    s = metric_stats(c.series["train/loss"], "min")
    assert len(s.spark) == len(s.spark_worst) == 32 and s.spark_scale == "log10"
    assert s.spark_worst[16] == SPARK_CHARS[-1] and s.spark_worst.count(SPARK_CHARS[-1]) == 1
    assert s.spark_range[1] == pytest.approx(loss[500_000], rel=1e-3)
    level = [SPARK_CHARS.index(ch) for ch in s.spark]
    assert level[0] > level[-1] == 0 and max(level) < len(SPARK_CHARS) - 1  # the means fall, the spike is lost
    # ... and the diagnosis names it, at its step
    assert by(diagnose(c, "train/loss", "min"), "spike").step == 500_000


def test_stats_size_does_not_grow_with_the_run():
    sizes = []
    for n in (1_000, 1_000_000):
        c = Curves()
        steps = np.arange(n, dtype=float)
        loss = decay(n, seed=1)
        loss[n // 3] = np.nan
        add(c, "train/loss", loss, steps=steps, epochs=steps // 100, times=steps / 30)
        sizes.append(len(metric_stats(c.series["train/loss"], "min").model_dump_json()))
    # only the digits of the count and of the steps and epochs named differ (3 more each, 6 of them)
    assert abs(sizes[1] - sizes[0]) <= 24, sizes


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def test_direction_and_train_val_pairing_by_name():
    assert direction_of("Val Acc") == "max" and direction_of("eval_loss") == "min" and direction_of("lr") is None
    names = [
        "train/loss",
        "val/loss",
        "train_acc",
        "val_acc",
        "Train Loss",
        "Val Loss",
        "loss",
        "eval_loss",
        "loss/train",
        "loss/val",
        "test/loss",
        "lr",
    ]
    pairs = set(pair_series(names))
    assert ("train/loss", "val/loss") in pairs and ("train_acc", "val_acc") in pairs
    hf = set(pair_series(["loss", "eval_loss", "learning_rate"]))
    assert hf == {("loss", "eval_loss")}
    assert set(pair_series(["Train Loss", "Val Loss"])) == {("Train Loss", "Val Loss")}
    assert set(pair_series(["loss/train", "loss/val", "loss/test"])) == {("loss/train", "loss/val")}


# ---------------------------------------------------------------------------------------------
# One labelled curve per rule
# ---------------------------------------------------------------------------------------------


def test_nonfinite_reports_the_first_step_and_the_other_series():
    c = Curves()
    steps = np.arange(1000.0)
    loss = decay(1000, seed=0)
    loss[640:] = np.nan
    grad = np.abs(np.random.default_rng(1).normal(1, 0.1, 1000))
    grad[639] = np.inf
    add(c, "train/loss", loss, steps)
    add(c, "grad_norm", grad, steps)
    f = by(diagnose(c, "train/loss", "min", remedies=TRM_REMEDIES), "nonfinite")  # a run of trm_nav: its flags
    assert f.severity == "fail" and f.metric == "grad_norm" and f.step == 639
    assert "train/loss from step 640" in f.evidence and "--lr 1e-4" in f.remedy
    generic = by(diagnose(c, "train/loss", "min"), "nonfinite")  # any other script: advice in words
    assert "1e-4" in generic.remedy and "--" not in generic.remedy


def test_spike_at_step_7000_of_10000():
    loss = decay(10_000, seed=7)
    loss[7000] *= 8
    c = Curves()
    add(c, "train/loss", loss)
    found = diagnose(c, "train/loss", "min")
    assert [f.rule for f in found] == ["spike"]
    assert found[0].step == 7000 and found[0].severity == "warn" and "1 transient spike" in found[0].evidence


def test_spike_reports_only_the_worst_three():
    loss = decay(10_000, seed=8)
    for step, factor in ((1500, 6), (3000, 30), (4500, 5), (6000, 12), (8000, 9)):
        loss[step] *= factor
    c = Curves()
    add(c, "train/loss", loss)
    f = by(diagnose(c, "train/loss", "min"), "spike")
    assert f.step == 3000 and f.evidence.startswith("5 transient spike(s)")
    listed = [s for s in ("3,000", "6,000", "8,000", "1,500", "4,500") if f"step {s}:" in f.evidence]
    assert listed == ["3,000", "6,000", "8,000"]


def test_spike_running_max_rule_on_a_very_noisy_loss():
    """Noise of 0.15 decades: a 3.5x jump over the window's maximum is below z 8 but caught by rule (b)."""
    rng = np.random.default_rng(11)
    n = 5000
    loss = 10 ** (rng.normal(0, 0.15, n) - np.arange(n) / n)
    loss[4000] = 3.5 * loss[3950:4000].max()
    c = Curves()
    add(c, "loss", loss)
    f = by(diagnose(c, "loss", "min"), "spike")
    assert f.step == 4000 and int(f.evidence.split("(z ")[1].split(")")[0]) < 8


def test_divergence_is_not_a_spike():
    n = 6000
    loss = decay(n, seed=4, tau_frac=0.1)
    loss[4000:] = loss[4000] * np.exp(np.arange(n - 4000) / 400)  # blows up from step 4,000
    c = Curves()
    add(c, "train/loss", loss)
    found = rules(diagnose(c, "train/loss", "min"))
    assert "spike" not in found and found["divergence"].severity == "fail"
    assert 4000 <= found["divergence"].step <= 5500
    assert "LR is too high" in found["divergence"].remedy


def test_plateau_since_when():
    n = 10_000
    t = np.arange(n)
    rng = np.random.default_rng(5)
    loss = (0.5 + 1.8 * np.exp(-t / 600)) * np.exp(rng.normal(0, 0.05, n))  # flat at 0.5 from ~step 3,000
    c = Curves()
    add(c, "train/loss", loss)
    f = by(diagnose(c, "train/loss", "min"), "plateau")
    assert f.severity == "warn" and 1500 <= f.step <= 4000 and "of the run" in f.evidence


def seed001_run(epochs: int = 50) -> Curves:
    """Seed 001's overfitting pattern: train -> 0.0012 loss / 0.9998 acc, val loss back up to 2.35 /
    val acc 0.72 at epoch 50, val best around epoch 12."""
    rng = np.random.default_rng(1)
    e = np.arange(1, epochs + 1, dtype=float)
    train_loss = 1.52 * np.exp(-(e - 1) / 6.8) + 0.0012
    val_loss = 0.45 + 1.0 * np.exp(-(e - 1) / 3.5) + 1.9 * np.clip(e - 12, 0, None) / 38
    train_acc = 1 - 0.65 * np.exp(-(e - 1) / 5)
    val_acc = 0.72 + 0.06 * np.exp(-(((e - 12) / 8) ** 2)) - 0.34 * np.exp(-(e - 1) / 3)
    c = Curves()
    steps = e * 100
    add(c, "Train Loss", train_loss * np.exp(rng.normal(0, 0.02, epochs)), steps, e)
    add(c, "Val Loss", val_loss * np.exp(rng.normal(0, 0.02, epochs)), steps, e)
    add(c, "Train Acc", np.minimum(train_acc + rng.normal(0, 0.002, epochs), 0.9998), steps, e)
    add(c, "Val Acc", val_acc + rng.normal(0, 0.005, epochs), steps, e)
    return c


def test_overfitting_seed001():
    found = diagnose(seed001_run(), "Val Acc", "max")
    f = by(found, "overfitting", "Val Loss")
    assert f.severity == "warn" and 900 <= f.step <= 1500  # val loss best around epoch 12
    assert "epoch" in f.evidence and "gap" in f.evidence and "augment" in f.remedy
    acc = by(found, "overfitting", "Val Acc")  # train accuracy ~1.0 vs val 0.72
    assert "Train Acc now 0.99" in acc.evidence and "gap 0.2" in acc.evidence
    assert not {"divergence", "plateau", "spike"} & {x.rule for x in found}


def test_overfitting_with_hugging_face_names():
    n = 400
    rng = np.random.default_rng(2)
    t = np.arange(n, dtype=float)
    c = Curves()
    add(c, "loss", 2.0 * np.exp(-t / 80) * np.exp(rng.normal(0, 0.03, n)), t * 10)
    ev = np.arange(0, n, 20, dtype=float)
    add(c, "eval_loss", 0.6 + 1.2 * np.exp(-ev / 60) + 0.004 * np.clip(ev - 120, 0, None), ev * 10)
    f = by(diagnose(c, "eval_loss", "min"), "overfitting")
    assert f.metric == "eval_loss" and 1000 <= f.step <= 2000


def test_underfitting_both_high_and_flat():
    rng = np.random.default_rng(6)
    e = np.arange(1, 61, dtype=float)
    c = Curves()
    for name, level in (("train_loss", 0.9), ("val_loss", 0.95)):
        add(c, name, (level + 0.3 * np.exp(-e / 3)) * np.exp(rng.normal(0, 0.01, 60)), e, e)
    for name, level in (("train_acc", 0.46), ("val_acc", 0.44)):
        add(c, name, level - 0.1 * np.exp(-e / 3) + rng.normal(0, 0.004, 60), e, e)
    found = diagnose(c, "val_acc", "max")
    f = by(found, "underfitting", "val_loss")
    assert f.severity == "warn" and "bigger model" in f.remedy
    by(found, "underfitting", "val_acc")
    assert "overfitting" not in rules(found) and "plateau" not in rules(found)


def test_chance_given_and_inferred():
    rng = np.random.default_rng(9)
    e = np.arange(1, 31, dtype=float)
    c = Curves()
    add(c, "val/acc", 0.2 + rng.normal(0, 0.006, 30), e, e)
    f = by(diagnose(c, "val/acc", "max", chance={"val/acc": 0.2}), "chance")
    assert f.severity == "fail" and "chance 0.2 (given)" in f.evidence and "1/5 actions" in f.remedy
    g = by(diagnose(c, "val/acc", "max"), "chance")
    assert "inferred 1/5" in g.evidence
    pct = Curves()
    add(pct, "Val Acc", 100 * (0.2 + rng.normal(0, 0.006, 30)), e, e)
    assert "inferred 1/5" in by(diagnose(pct, "Val Acc", "max"), "chance").evidence
    # learning, not chance
    learning = Curves()
    add(learning, "val/acc", 0.2 + 0.6 * (1 - np.exp(-e / 8)) + rng.normal(0, 0.006, 30), e, e)
    assert "chance" not in rules(diagnose(learning, "val/acc", "max", chance={"val/acc": 0.2}))


def test_lr_too_low_seed003():
    rng = np.random.default_rng(3)
    n = 3000
    steps = np.arange(n, dtype=float) * 10
    c = Curves()
    add(c, "train/loss", 0.08 * 10 ** (-0.15 * np.arange(n) / n) * np.exp(rng.normal(0, 0.03, n)), steps)
    add(c, "train/lr", np.full(n, 1e-5), steps)
    f = by(diagnose(c, "train/loss", "min"), "lr_too_low")
    assert f.severity == "warn" and "train/lr = 1e-05" in f.evidence and "5e-5" in f.remedy
    assert "needs ~" in f.evidence


def test_no_progress_on_the_primary():
    rng = np.random.default_rng(10)
    n = 2000
    c = Curves()
    add(c, "val/loss", 0.69 * np.exp(rng.normal(0, 0.05, n)))
    found = diagnose(c, "val/loss", "min")
    assert [f.rule for f in found] == ["no_progress"] and found[0].severity == "fail"


def test_ppo_reward_no_progress_gets_the_ppo_remedy():
    rng = np.random.default_rng(12)
    n = 500
    c = Curves()
    add(c, "charts/episode_reward", 5 + rng.normal(0, 1.0, n))
    f = by(diagnose(c, "charts/episode_reward", "max"), "no_progress")
    assert "entropy" in f.remedy


def oscillating(n: int, seed: int, swing: float = 0.35, level: float = 1.6) -> np.ndarray:
    """Seed 001's "lr too high": a loss bouncing at its level by `swing` decades (sigma), not falling."""
    rng = np.random.default_rng(seed)
    return level * 10 ** rng.normal(0.0, swing, n)


@pytest.mark.parametrize("n", [30, 2000])
def test_lr_too_high_on_a_loss_that_oscillates_wildly_and_does_not_converge(n):
    c = Curves()
    add(c, "train/loss", oscillating(n, seed=13), np.arange(n, dtype=float))
    found = diagnose(c, "train/loss", "min")
    assert [f.rule for f in found] == ["lr_too_high"], [f.model_dump() for f in found]  # not no_progress
    f = found[0]
    assert f.severity == "fail" and "from one point to the next" in f.evidence and "lower it 3-10x" in f.remedy
    assert "--" not in f.remedy


def test_lr_too_high_explains_a_primary_accuracy_that_does_not_progress():
    rng = np.random.default_rng(14)
    n = 200
    t = np.arange(n, dtype=float)
    c = Curves()
    add(c, "train/loss", oscillating(n, seed=15), t)
    add(c, "val/acc", 0.35 + rng.normal(0, 0.02, n), t)
    found = rules(diagnose(c, "val/acc", "max"))
    assert found["lr_too_high"].metric == "train/loss" and "no_progress" not in found


def test_lr_too_high_after_an_initial_descent_but_not_while_it_still_falls():
    n = 3000
    t = np.arange(n, dtype=float)
    bouncing = np.where(t < 600, 20 * np.exp(-t / 150), 20 * np.exp(-4.0)) * oscillating(n, seed=16, level=1.0)
    c = Curves()
    add(c, "loss", bouncing, t)
    assert "lr_too_high" in rules(diagnose(c, "loss", "min"))
    noisy = Curves()  # the same bounce while the loss still falls 100x: noisy, but converging
    add(noisy, "loss", 2.3 * np.exp(-t / 650) * oscillating(n, seed=16, swing=0.2, level=1.0), t)
    found = rules(diagnose(noisy, "loss", "min"))
    assert "lr_too_high" not in found and "no_progress" not in found


def test_not_lr_too_high_a_flat_quiet_loss_a_divergence_or_a_single_spike():
    n = 2000
    t = np.arange(n, dtype=float)
    rng = np.random.default_rng(17)
    flat = Curves()  # no progress, small noise: the pipeline, not the LR
    add(flat, "val/loss", 0.69 * np.exp(rng.normal(0, 0.05, n)), t)
    assert [f.rule for f in diagnose(flat, "val/loss", "min")] == ["no_progress"]
    diverging = Curves()  # a loud, steady rise is a divergence
    add(diverging, "train/loss", 0.5 * np.exp(t / 400) * oscillating(n, seed=18, swing=0.3, level=1.0), t)
    found = rules(diagnose(diverging, "train/loss", "min"))
    assert "divergence" in found and "lr_too_high" not in found
    spiky = Curves()  # one spike in a flat, quiet loss moves no median
    loss = 0.69 * np.exp(rng.normal(0, 0.05, n))
    loss[1500] *= 50
    add(spiky, "val/loss", loss, t)
    assert "lr_too_high" not in rules(diagnose(spiky, "val/loss", "min"))


def test_lr_too_high_on_a_real_trm_run_at_lr_3():
    """The bundled TRM trainer at --lr 3 (tests/fixtures/curves/README.md): val loss bounces 2.6x."""
    with loaded(FIXTURES / "trm_lr3") as run:
        found = rules(diagnose(run.curves, "val/acc", "max", chance={"acc": 0.2}, remedies=TRM_REMEDIES))
    f = found["lr_too_high"]
    assert f.metric == "val/loss" and "train/lr = 3" in f.evidence and "--lr" in f.remedy
    assert "no_progress" not in found


def test_lr_too_high_on_a_live_trm_run_at_lr_3(tmp_path):
    """The recorded run, trained now (about 6 s on a CPU): the sign is the trainer's, not the file's."""
    # The fixture's run, 20 epochs instead of 30: the bounce shows from epoch 11 on.
    args = "--num-train 300 --num-test 60 --dim 16 --depth 1 --device cpu --epochs 20 --patience 0 --lr 3"
    args = [*args.split(), "--lr-schedule", "constant"]
    env = {**os.environ, "TRAINGUARD_METRICS": str(tmp_path / "metrics.jsonl")}
    env.pop("TRAINGUARD_RUN_DIR", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "trainers" / "trm_nav.py"), *args, "--checkpoint-dir", str(tmp_path / "ck")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with loaded(tmp_path) as run:
        found = rules(diagnose(run.curves, "val/acc", "max", chance={"acc": 0.2}, remedies=TRM_REMEDIES))
    # Where the bounce shows depends on the CPU's kernels: on some the run bounces (lr_too_high on a
    # loss), on others it falls back from its early best (divergence); either way the remedy is --lr.
    sign = found.get("lr_too_high") or found.get("divergence")
    assert sign is not None, sorted(found)
    assert sign.rule == "divergence" or sign.metric in ("train/loss", "val/loss")
    assert "--lr" in sign.remedy
    assert "no_progress" not in found


def test_a_spec_remedy_replaces_the_generic_one_for_its_rule_only():
    n = 2000
    c = Curves()
    add(c, "train/loss", oscillating(n, seed=13), np.arange(n, dtype=float))
    loss = decay(n, seed=3)
    loss[1200] *= 20
    add(c, "val/loss", loss, np.arange(n, dtype=float))
    found = rules(diagnose(c, "train/loss", "min", remedies={"lr_too_high": "--lr 1e-4 --warmup 3"}))
    assert found["lr_too_high"].remedy == "--lr 1e-4 --warmup 3"
    assert found["spike"].remedy.startswith("check the batch at that step")


# ---------------------------------------------------------------------------------------------
# Clean curves raise nothing; short runs say nothing; the output stays bounded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [30, 200, 3_000, 50_000])
@pytest.mark.parametrize("noise", [0.01, 0.05, 0.15])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_training_raises_nothing(n, noise, seed):
    rng = np.random.default_rng(seed + 100)
    t = np.arange(n, dtype=float)
    c = Curves()
    add(c, "train/loss", decay(n, seed, noise), t, t // max(1, n // 20), 1000 + t / 7)
    add(c, "val/loss", decay(n, seed + 50, noise, start=2.4), t)
    acc = 0.2 + 0.75 * (1 - np.exp(-t / (0.25 * n)))
    add(c, "train/acc", np.clip(acc + rng.normal(0, noise / 10, n), 0, 1), t)
    add(c, "val/acc", np.clip(acc - 0.03 + rng.normal(0, noise / 10, n), 0, 1), t)
    add(c, "lr", np.full(n, 1e-3), t)
    found = diagnose(c, "val/acc", "max", chance={"acc": 0.2})
    assert found == [], [f.model_dump() for f in found]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_loss_with_a_floor_and_additive_noise_raises_nothing(seed):
    n = 20_000
    t = np.arange(n, dtype=float)
    loss = 0.1 + 2.2 * np.exp(-t / (0.25 * n)) + np.random.default_rng(seed).normal(0, 0.005, n)
    c = Curves()
    add(c, "loss", loss, t)
    assert diagnose(c, "loss", "min") == []


def test_short_runs_say_nothing_but_nonfinite():
    c = Curves()
    add(c, "train/loss", [2.0, 5.0, 0.1, 9.0, 3.0])
    add(c, "val/loss", [1.0, 1.0, 1.0, 1.0, 1.0])
    add(c, "val/acc", [0.2, 0.2, 0.2, 0.2, 0.2])
    assert diagnose(c, "val/acc", "max") == []
    add(c, "grad_norm", [1.0, float("nan")])
    assert [f.rule for f in diagnose(c, "val/acc", "max")] == ["nonfinite"]


def test_findings_are_bounded_and_most_severe_first():
    c = Curves()
    n = 5000
    for k in range(30):
        loss = decay(n, seed=k)
        loss[1000 + k] *= 20
        loss[n - 100 :] = np.nan if k % 2 else loss[n - 100 :]
        add(c, f"head{k}/loss", loss)
    found = diagnose(c, "head0/loss", "min")
    assert 1 <= len(found) <= MAX_FINDINGS
    order = {"fail": 0, "warn": 1, "info": 2}
    assert [order[f.severity] for f in found] == sorted(order[f.severity] for f in found)
    assert sum(f.rule == "nonfinite" for f in found) == 1
    assert len(json.dumps([f.model_dump() for f in found])) < 6000  # about 1,500 tokens
