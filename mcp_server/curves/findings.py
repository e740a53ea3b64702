"""Diagnoses of a run's curves: which rule fires, on what metric, from where, and the fix.

`diagnose` reads a whole `Curves` and returns at most `MAX_FINDINGS` `Finding`s, most severe
first, each with its evidence and a remedy: the trainer spec's own where it gives one, else
advice in words from the users' own training guides (the seeds, `remedies.py`). Everything is
vectorised numpy, bounded whatever the run's length. Conventions used throughout:

* A metric is analysed in a *transformed, oriented* space where lower is better: log10 of the
  value for positive metrics that are not maximised (losses span decades, and a relative change
  means the same early and late), the value itself otherwise, negated for "max" metrics.
* *Levels* are medians of `LEVEL_BLOCKS` consecutive blocks of points (5% of the run each):
  robust to noise and to single spikes. Trend rules compare levels, never single points.
* A *meaningful* change is the larger of a fixed floor (`MEANINGFUL_DECADES` or
  `MEANINGFUL_REL` of the metric's scale) and `NOISE_SIGMAS` times the noise of a level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel

from mcp_server.curves.names import Direction, direction_of, is_acc, is_lr, is_rl, pair_series, split_role
from mcp_server.curves.names import find as find_name
from mcp_server.curves.remedies import RULE_IDS, remedy
from mcp_server.curves.stats import SLOPE_FRAC, TAIL_FRAC, Number, _fmt, _fmt_step, _num, _slope, _tail_start, _use_log
from mcp_server.curves.store import Curves, Series

Severity = Literal["fail", "warn", "info"]

# ---------------------------------------------------------------------------------------------
# Thresholds. Each one is a named constant with the reason for its value.
# ---------------------------------------------------------------------------------------------

MIN_POINTS = 6  # with 5 points or fewer, say nothing (but non-finite values): too few to judge a trend
LEVEL_BLOCKS = 20  # levels are medians of 20 blocks (5% of the run each)
LEVEL_MIN_POINTS = 3  # ...but of 3 points at least: a level of 1 point is just noise (short runs get fewer)
LEVEL_SAMPLE = 4096  # a level is the median of at most 4,096 evenly spaced points of its block
NOISE_SAMPLE = 20_000  # the noise is estimated from at most 20,000 consecutive triples
NOISE_SIGMAS = 3.0  # a change smaller than 3 sigma of a level's noise is not a change
MEANINGFUL_DECADES = 0.02  # on log-scale metrics, a change under 0.02 decades (4.7%) is not meaningful
MEANINGFUL_REL = 0.01  # on linear metrics, a change under 1% of the metric's scale is not meaningful

SPIKE_MIN_POINTS = 30  # spike rules need a few windows of history
SPIKE_WINDOW = 50  # reference window: the preceding 50 points (fewer on short series, see _spike_window)
SPIKE_Z = 8.0  # robust z (MAD-scaled) of a spike: Gaussian noise never reaches 8 sigma in 1e6 points
SPIKE_MIN_DECADES = math.log10(1.5)  # ...and a loss spike is at least 1.5x its reference median
SPIKE_MIN_REL = 0.25  # on linear metrics, a spike moves at least 25% of the reference's magnitude
SPIKE_MAX_FACTOR = 3.0  # running-max rule: 3x the preceding window's max (2x: false alarms at 30% noise)
SPIKE_WARMUP_FRAC = 0.1  # the running-max rule starts after the initial descent (first 10% skipped)
SPIKE_RECOVERY = 0.5  # a spike is transient: the next window's median is back below half its excursion
SPIKE_SCREEN_SAMPLE = 16  # long series are screened against windows subsampled to ~16 points
SPIKE_MAX_CANDIDATES = 2000  # cap the recovery check on pathological curves (keeps it O(n))
SPIKE_REPORTED = 3  # report the worst 3 spikes of a metric, not every one

DIVERGE_MIN_DECADES = math.log10(2.0)  # diverged: the tail is at least 2x its best level (log metrics)
DIVERGE_MIN_REL = 0.1  # ...or 10% of the metric's scale worse (linear metrics)
DIVERGE_LOST_FRAC = 0.5  # ...and has given back at least half of what the run had gained

PLATEAU_MIN_FRAC = 0.4  # a plateau covers at least the last 40% of the run (8 of 20 levels)...
PLATEAU_WARN_FRAC = 0.6  # ...info (could stop early); a warning when 60% or more of the run was flat
PLATEAU_MIN_LEVELS = 5  # and is judged on 5 levels at least (15 points): 2 levels are not a trend
PLATEAU_GAIN_FRAC = 0.02  # "reached its final best": within 2% of the run's total gain (5% flags saturating curves)
CONVERGED_DECADES = 2.0  # a loss that fell 100x is converged, its flat end is no plateau
CONVERGED_ACC = 0.99  # an accuracy at 99% is converged

OVERFIT_VAL_DECADES = math.log10(1.1)  # val loss 10% above its best level is worsening
OVERFIT_VAL_REL = 0.02  # a linear val metric 2% of its scale below its best is worsening
OVERFIT_BEST_BEFORE = 2  # val's best level at least 2 levels (10% of the run) before the end
OVERFIT_ACC_GAP = 0.15  # or: train accuracy 15 points above val (seed 001: 0.9998 vs 0.7234)...
OVERFIT_TRAIN_FIT = 0.95  # ...with train accuracy >= 95% (seed 001: "perfect train accuracy")

UNDERFIT_MAX_DECADES = math.log10(2.0)  # an underfit loss fell less than 2x over the whole run...
UNDERFIT_MAX_ACC = 0.6  # ...an underfit accuracy ends below 60% (seed 001 expects 75-95%)
UNDERFIT_MAX_GAP = 0.1  # ...and train accuracy is not 10 points above val (else it is overfitting)
UNDERFIT_MAX_LOSS_GAP = math.log10(2.0)  # ...nor a train loss less than half val's

CHANCE_MARGIN = 0.05  # stuck at chance: within 5 points of the given chance level...
CHANCE_INFER_REL = 0.1  # inferred 1/k (k = 2..10): every level within 10% of 1/k
CHANCE_K = range(2, 11)

LR_MIN_POINTS = 20  # the slow-LR rule fits slopes: it needs a few levels
LR_LOW_DECADES_PER_RUN = 0.3  # at the current rate, under 2x per run length: 10x needs > 3 runs
LR_STEADY_FRAC = 0.5  # steady, not converging: the recent rate is at least half the run's average

# Seed 001: "lr too high: loss oscillates wildly, doesn't converge". Judged on the last half of a
# loss (the first half may hold the initial descent or blow-up), on the log10 scale.
LR_HIGH_MIN_POINTS = 12  # the last half then has 6 points at least: 5 swings to take a median of
LR_HIGH_TAIL_FRAC = 0.5  # oscillating for the last half of the run, not in a transient
# "Wildly": the median jump between consecutive points (around the local trend) is 1.5x or more,
# per-point noise of ~43%; minibatch noise of a healthy run is a few to ~20% (the clean corpus
# of the tests goes to 16%, the very noisy spike test's 0.15 decades is a 1.33x median jump).
LR_HIGH_SWING_DECADES = math.log10(1.5)
# "Doesn't converge": the median of the last quarter of the run is less than one median jump
# below the median of the quarter before: the loss bounces by more than it descends. A loss
# still falling as fast as the test corpus' (e-fold in a quarter of the run) clears 1.5 jumps
# even at 50% noise; the bouncing val losses of a TRM run at LR 3 or 10 sit at 0.3.
LR_HIGH_FALL_SWINGS = 1.0
MAX_FINDINGS = 8
LR_LAST_WINDOW = 4096  # the LR's last finite value is looked for this many points at a time, from the end
SEVERITY_ORDER = {"fail": 0, "warn": 1, "info": 2}
# One trend finding per metric: the first rule in this order that fires explains the curve.
# lr_too_high comes before the rules it explains: a loss bouncing at its level underfits, does not
# progress and has plateaued because the LR is too high, and their remedies would send a user elsewhere.
TREND_PRIORITY = (
    "divergence",
    "overfitting",
    "lr_too_high",
    "chance",
    "underfitting",
    "no_progress",
    "lr_too_low",
    "plateau",
)
RULE_ORDER = ("nonfinite", *TREND_PRIORITY, "spike")
assert sorted(RULE_ORDER) == sorted(RULE_IDS), "every rule has a generic remedy in curves/remedies.py"


class Finding(BaseModel):
    """One diagnosis: which rule, how bad, on what metric, from where, the numbers and the fix."""

    rule: str
    severity: Severity
    metric: str
    step: Number | None
    evidence: str
    remedy: str


@dataclass
class _Curve:
    """A series' finite points in the transformed, oriented space (lower is better)."""

    name: str
    direction: Direction | None
    v: np.ndarray  # finite values
    s: np.ndarray  # their steps
    e: np.ndarray  # their epochs (NaN unknown)
    y: np.ndarray  # transformed (log10 or not), negated for "max": lower is better
    log: bool
    levels: np.ndarray  # block medians of y
    edges: np.ndarray  # block boundaries (indices into v), len(levels) + 1
    noise: float  # standard deviation of one level's noise

    @property
    def n(self) -> int:
        return int(self.v.size)

    def raw(self, y: float) -> float:
        """Back from the oriented, transformed space to the metric's own units."""
        x = -y if self.direction == "max" else y
        return 10.0**x if self.log else x

    def scale(self) -> float:
        """The size of the metric's values (linear metrics): meaningful changes are relative to it."""
        lv = self.levels
        return max(float(np.max(np.abs(lv))), float(np.max(lv) - np.min(lv)), 1e-12)

    def meaningful(self, floor_decades: float = MEANINGFUL_DECADES, floor_rel: float = MEANINGFUL_REL) -> float:
        """The smallest change of a level that is more than noise and worth reporting."""
        floor = floor_decades if self.log else floor_rel * self.scale()
        return max(floor, NOISE_SIGMAS * self.noise)

    def step_at(self, i: int) -> Number | None:
        return _num(float(self.s[min(max(i, 0), self.n - 1)]))

    def where(self, i: int) -> str:
        """'step 1,200 (epoch 12)' for the point i."""
        i = min(max(i, 0), self.n - 1)
        text = f"step {_fmt_step(self.step_at(i))}"
        epoch = _num(float(self.e[i]))
        return text + (f" (epoch {_fmt_step(epoch)})" if epoch is not None else "")

    def level_raw(self, i: int) -> float:
        return self.raw(float(self.levels[i]))

    def tail_slope(self) -> float | None:
        """Slope of y over the last SLOPE_FRAC, per step (negative: improving)."""
        t0 = _tail_start(self.n, SLOPE_FRAC, 2)
        return _slope(self.s[t0:], self.y[t0:])


def _levels(y: np.ndarray, blocks: int = LEVEL_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Medians of `blocks` runs of consecutive points, and the runs' boundaries.

    A long run's median is taken over at most LEVEL_SAMPLE evenly spaced points of it: as
    robust, its noise still far below any threshold, and the cost bounded on 1M points.
    """
    k = max(1, min(blocks, y.size // LEVEL_MIN_POINTS))
    edges = np.linspace(0, y.size, k + 1).astype(np.int64)
    meds = np.empty(k)
    for j, (a, b) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)):
        stride = -(-(b - a) // LEVEL_SAMPLE)
        meds[j] = np.median(y[a:b:stride])
    return meds, edges


def _noise(y: np.ndarray, block: int) -> float:
    """Noise of a level: robust sigma of one point over sqrt(block).

    The point sigma is the MAD of second differences y[i-1] - 2 y[i] + y[i+1] (a local trend
    cancels out; their variance is 6 sigma^2) of at most NOISE_SAMPLE evenly spaced triples.
    """
    if y.size < 4:
        return 0.0
    stride = -(-(y.size - 2) // NOISE_SAMPLE)
    mid = np.arange(1, y.size - 1, stride)
    d2 = y[mid - 1] - 2.0 * y[mid] + y[mid + 1]
    sigma = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0)
    return 1.2533 * sigma / math.sqrt(max(min(block, LEVEL_SAMPLE), 1))  # 1.2533: efficiency of a median


def _curve(series: Series, direction: Direction | None) -> _Curve | None:
    """The analysed form of a series, None when it has no finite value."""
    v, s, e = series.values(), series.steps(), series.epochs()
    finite = np.isfinite(v)
    if not finite.all():
        if not finite.any():
            return None
        v, s, e = v[finite], s[finite], e[finite]
    log = _use_log(v, direction)
    y = np.log10(v) if log else v.copy()
    if direction == "max":
        np.negative(y, out=y)
    levels, edges = _levels(y)
    noise = _noise(y, max(1, v.size // max(1, levels.size)))
    return _Curve(series.name, direction, v, s, e, y, log, levels, edges, noise)


def _acc_values(c: _Curve) -> np.ndarray | None:
    """An accuracy's values as fractions (percentages divided by 100), None if not an accuracy."""
    if not is_acc(c.name) or c.v.min() < 0:
        return None
    top = float(c.v.max())
    if top <= 1.0:
        return c.v
    return c.v / 100.0 if top <= 100.0 else None


# ---------------------------------------------------------------------------------------------
# Rules. Each returns a Finding or None (spike: a list); `None` when the curve is too short.
# ---------------------------------------------------------------------------------------------


def _finding(rule: str, severity: Severity, c: _Curve | str, step: Number | None, evidence: str) -> Finding:
    name = c if isinstance(c, str) else c.name
    return Finding(
        rule=rule, severity=severity, metric=name, step=step, evidence=evidence, remedy=remedy(rule, is_rl(name))
    )


def rule_nonfinite(curves: Curves) -> Finding | None:
    """The first NaN/inf of the run, and which other series went non-finite."""
    hits = []
    for s in curves.series.values():
        values = s.values()
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            hits.append((float(s.steps()[i]), i, s.name, float(values[i]), int(bad.sum()), len(s)))
    if not hits:
        return None
    hits.sort()
    step, i, name, value, count, total = hits[0]
    text = (
        f"{name} = {value} at step {_fmt_step(_num(step))} (point {i + 1:,}); {count:,} of {total:,} points non-finite"
    )
    others = [f"{h[2]} from step {_fmt_step(_num(h[0]))}" for h in hits[1:4]]
    if others:
        text += "; also " + ", ".join(others) + (f" (+{len(hits) - 4} more)" if len(hits) > 4 else "")
    return _finding("nonfinite", "fail", name, _num(step), text)


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """np.median(rows, axis=1) of finite values, by sorting each short row: 4-5 times faster than
    the two-index partition np.median does on (20,000, 17) windows."""
    ordered = np.sort(rows, axis=1)
    k = ordered.shape[1]
    if k % 2:
        return ordered[:, k // 2]
    return 0.5 * (ordered[:, k // 2 - 1] + ordered[:, k // 2])


def _spike_window(n: int) -> int:
    return int(min(SPIKE_WINDOW, max(10, n // 10)))


def _spike_floor(c: _Curve, ref_med: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(smallest robust sigma, smallest excursion) of a spike against reference medians."""
    if c.log:  # 1e-3 decades: a flat window is not infinitely precise
        return np.full_like(ref_med, 1e-3), np.full_like(ref_med, SPIKE_MIN_DECADES)
    mag = np.maximum(np.abs(ref_med), 1e-12)
    return 1e-3 * mag, SPIKE_MIN_REL * mag


def _spike_screen(c: _Curve, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions that may be spikes, and their rough z: every point from the second window on,
    against the preceding full window's median and MAD taken over every `stride`-th point, at
    half the thresholds of `_spike_score`. Works on the (windows, w) view: no gathers."""
    n, y = c.n, c.y
    nb = n // w
    blocks = y[: nb * w].reshape(nb, w)
    sample = blocks[:, ::stride]
    med = _row_medians(sample)
    sig = 1.4826 * _row_medians(np.abs(sample - med[:, None]))
    floor_sig, _ = _spike_floor(c, med)
    scale = np.maximum(sig, floor_sig)
    # One threshold per window: the loose rule (a), or the loose rule (b) where it is lower.
    threshold = med + (SPIKE_Z / 2) * scale
    if c.log and c.direction != "max":
        threshold = np.minimum(threshold, blocks.max(axis=1) + math.log10(SPIKE_MAX_FACTOR) / 2)
    # full windows 1..nb-1 against the window before; the ragged end against the last full window
    hits = [
        np.flatnonzero(blocks[1:] >= threshold[:-1, None]) + w,
        np.flatnonzero(y[nb * w :] >= threshold[-1]) + nb * w,
    ]
    pos = np.concatenate(hits)
    ref = np.minimum(pos // w - 1, nb - 1)
    return pos, (y[pos] - med[ref]) / scale[ref]


def _spike_score(c: _Curve, w: int, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference median, robust z, is a spike by rule (a) or (b)) of the points `pos`, each against
    the exact statistics of the full window before its own (the last full one at the ragged end)."""
    ref = np.minimum(pos // w - 1, c.n // w - 1)
    rows = c.y[ref[:, None] * w + np.arange(w)[None, :]]
    ref_med = _row_medians(rows)
    floor_sig, min_exc = _spike_floor(c, ref_med)
    sig = np.maximum(1.4826 * _row_medians(np.abs(rows - ref_med[:, None])), floor_sig)
    exc = c.y[pos] - ref_med
    z = exc / sig
    spike = (z >= SPIKE_Z) & (exc >= min_exc)
    if c.log and c.direction != "max":
        after_descent = pos >= int(c.n * SPIKE_WARMUP_FRAC)
        spike |= after_descent & (c.y[pos] - rows.max(axis=1) >= math.log10(SPIKE_MAX_FACTOR))
    return ref_med, z, spike


def rule_spike(c: _Curve) -> Finding | None:
    """Transient excursions in the bad direction, by two rules on the preceding window of points.

    (a) robust z: (y - median of the preceding window) / (1.4826 MAD of that window) >= SPIKE_Z,
        and at least SPIKE_MIN_DECADES (log) or SPIKE_MIN_REL of the median (linear) above it;
    (b) running max (log-scale losses, after SPIKE_WARMUP_FRAC): above SPIKE_MAX_FACTOR times the
        preceding window's maximum.
    Either must be transient: the median of the next window is back below half the excursion
    (a loss that jumps and stays up is for `divergence`). Nearby points make one spike; the
    worst SPIKE_REPORTED are reported, the worst's step is the finding's.

    A first pass screens every point against windows subsampled to ~SPIKE_SCREEN_SAMPLE points
    at half the thresholds; at most SPIKE_MAX_CANDIDATES survivors are then scored exactly.
    """
    n = c.n
    if n < SPIKE_MIN_POINTS:
        return None
    w = _spike_window(n)
    pos, rough = _spike_screen(c, w, max(1, w // SPIKE_SCREEN_SAMPLE))
    if pos.size > SPIKE_MAX_CANDIDATES:
        pos = np.sort(pos[np.argsort(-rough)[:SPIKE_MAX_CANDIDATES]])
    pos = pos[pos < n - 1]  # a last point cannot be shown transient
    if pos.size == 0:
        return None
    ref_med, z, spike = _spike_score(c, w, pos)
    pos, ref_med, z = pos[spike], ref_med[spike], z[spike]
    nxt = np.minimum(pos[:, None] + np.arange(1, w + 1)[None, :], n - 1)
    after = _row_medians(c.y[nxt]) if pos.size else np.empty(0)
    back = after <= ref_med + SPIKE_RECOVERY * (c.y[pos] - ref_med)
    pos, ref_med, z = pos[back], ref_med[back], z[back]
    if pos.size == 0:
        return None
    # Points closer than a window make one spike; keep each group's highest z.
    group = np.concatenate(([0], np.cumsum(np.diff(pos) > w)))
    best: dict[int, int] = {}
    for k, g in enumerate(group.tolist()):
        if g not in best or z[k] > z[best[g]]:
            best[g] = k
    worst = sorted(best.values(), key=lambda k: -z[k])[:SPIKE_REPORTED]
    parts = [
        f"step {_fmt_step(c.step_at(int(pos[k])))}: {_fmt(float(c.v[pos[k]]))} vs median "
        f"{_fmt(c.raw(float(ref_med[k])))} (z {min(float(z[k]), 9999):.0f})"
        for k in worst
    ]
    text = f"{len(best)} transient spike(s); worst " + "; ".join(parts)
    return _finding("spike", "warn", c, c.step_at(int(pos[worst[0]])), text)


def _crossing(c: _Curve, after_block: int, threshold: float) -> int:
    """Index of the first point of the first level after `after_block` at or above `threshold`."""
    later = np.flatnonzero(c.levels[after_block + 1 :] >= threshold)
    block = after_block + 1 + int(later[0]) if later.size else min(after_block + 1, c.levels.size - 1)
    return int(c.edges[block])


def rule_divergence(c: _Curve) -> Finding | None:
    """The tail level is far worse than the best level and not improving (a sustained rise, not a spike)."""
    if c.n < MIN_POINTS:
        return None
    lv = c.levels
    jb = int(np.argmin(lv))
    if jb >= lv.size - 1:
        return None
    best, tail, start = float(lv[jb]), float(lv[-1]), float(lv[0])
    lost, gain = tail - best, start - best
    floor = DIVERGE_MIN_DECADES if c.log else DIVERGE_MIN_REL * c.scale()
    if lost < max(floor, DIVERGE_LOST_FRAC * gain, NOISE_SIGMAS * c.noise):
        return None
    slope = c.tail_slope()
    if slope is None or slope < 0:
        return None  # recovering
    i = _crossing(c, jb, best + lost / 2)
    how = f"{10**lost:.3g}x" if c.log else f"{_fmt(abs(c.raw(tail) - c.raw(best)))} worse"
    text = (
        f"level {_fmt(c.raw(best))} near {c.where(int(c.edges[jb]))}, now {_fmt(c.raw(tail))} ({how}) "
        f"and not improving since {c.where(i)}"
    )
    return _finding("divergence", "fail", c, c.step_at(i), text)


def _converged(c: _Curve) -> bool:
    """Obviously converged: an accuracy >= CONVERGED_ACC, or a loss that fell CONVERGED_DECADES."""
    acc = _acc_values(c)
    if acc is not None and c.direction == "max":
        return float(np.median(acc[_tail_start(acc.size, TAIL_FRAC, 1) :])) >= CONVERGED_ACC
    return c.log and float(c.levels[0] - c.levels.min()) >= CONVERGED_DECADES


def _plateau_since(c: _Curve) -> int | None:
    """First level from which the curve stays within PLATEAU_GAIN_FRAC of its final best; None if none."""
    lv = c.levels
    final_best = float(lv.min())
    gain = float(lv[0]) - final_best
    # No noise term: noise must not make a still-improving curve look flat.
    floor = MEANINGFUL_DECADES if c.log else MEANINGFUL_REL * c.scale()
    tol = max(PLATEAU_GAIN_FRAC * max(gain, 0.0), floor)
    near = np.flatnonzero(lv <= final_best + tol)
    return int(near[0]) if near.size else None


def rule_plateau(c: _Curve) -> Finding | None:
    """No meaningful improvement over the last PLATEAU_MIN_FRAC of the run or more, not converged."""
    k = c.levels.size
    if k < PLATEAU_MIN_LEVELS or _converged(c):
        return None
    j = _plateau_since(c)
    if j is None or (k - j) < PLATEAU_MIN_FRAC * k:
        return None
    i = int(c.edges[j])
    frac = 1.0 - i / c.n
    best = c.raw(float(c.levels.min()))
    text = (
        f"no meaningful improvement since {c.where(i)} ({frac:.0%} of the run): level "
        f"{_fmt(c.level_raw(j))} then, {_fmt(c.level_raw(k - 1))} now, best level {_fmt(best)}"
    )
    return _finding("plateau", "warn" if frac >= PLATEAU_WARN_FRAC else "info", c, c.step_at(i), text)


def rule_no_progress(c: _Curve) -> Finding | None:
    """The primary metric's last level is no better than its first."""
    if c.n < MIN_POINTS:
        return None
    start, tail = float(c.levels[0]), float(c.levels[-1])
    if start - tail >= c.meaningful():
        return None
    text = (
        f"first 5% level {_fmt(c.raw(start))}, last 5% level {_fmt(c.raw(tail))} "
        f"over {c.n:,} points (to {c.where(c.n - 1)})"
    )
    return _finding("no_progress", "fail", c, c.step_at(0), text)


def _level_at_step(c: _Curve, lo: float, hi: float) -> float:
    """Median of y over steps [lo, hi], or at the nearest logged step."""
    a, b = np.searchsorted(c.s, lo, "left"), np.searchsorted(c.s, hi, "right")
    if b > a:
        return float(np.median(c.y[a:b]))
    return float(c.y[min(int(a), c.n - 1)])


def rule_overfitting(t: _Curve, v: _Curve) -> Finding | None:
    """Validation worsening since its best while training still improves, or a large accuracy gap.

    (a) val's last level is OVERFIT_VAL_DECADES / OVERFIT_VAL_REL (and noise) above its best
        level, which lies OVERFIT_BEST_BEFORE levels or more before the end, while train improved
        meaningfully since that step;
    (b) accuracies: train >= OVERFIT_TRAIN_FIT and OVERFIT_ACC_GAP above val, val not improving.
    """
    if t.n < MIN_POINTS or v.n < MIN_POINTS or t.direction != v.direction:
        return None
    lv = v.levels
    jb = int(np.argmin(lv))
    floor = OVERFIT_VAL_DECADES if v.log else OVERFIT_VAL_REL * v.scale()
    worse = float(lv[-1] - lv[jb]) >= max(floor, NOISE_SIGMAS * v.noise)
    early = jb <= lv.size - 1 - OVERFIT_BEST_BEFORE
    lo, hi = float(v.s[v.edges[jb]]), float(v.s[v.edges[jb + 1] - 1])
    train_gain = _level_at_step(t, lo, hi) - float(t.levels[-1])
    fired = worse and early and train_gain >= t.meaningful()
    ta, va = _acc_values(t), _acc_values(v)
    if not fired and ta is not None and va is not None:
        t_tail = float(np.median(ta[_tail_start(ta.size, TAIL_FRAC, 1) :]))
        v_tail = float(np.median(va[_tail_start(va.size, TAIL_FRAC, 1) :]))
        since = _plateau_since(v)
        v_stalled = since is not None and since <= lv.size - OVERFIT_BEST_BEFORE
        fired = t_tail >= OVERFIT_TRAIN_FIT and t_tail - v_tail >= OVERFIT_ACC_GAP and v_stalled
    if not fired:
        return None
    ib = int(np.argmin(v.y))  # the best raw point: where the best checkpoint is
    t_now, v_now = float(t.v[-1]), float(v.v[-1])
    text = (
        f"{v.name} best {_fmt(float(v.v[ib]))} at {v.where(ib)}, now {_fmt(v_now)}; {t.name} now "
        f"{_fmt(t_now)} (improved since); gap {_fmt(abs(v_now - t_now))}"
    )
    return _finding("overfitting", "warn", v, v.step_at(ib), text)


def rule_underfitting(t: _Curve, v: _Curve) -> Finding | None:
    """Train and val both high and flat: losses fell less than UNDERFIT_MAX_DECADES, or accuracies
    end below UNDERFIT_MAX_ACC, both plateaued for the last PLATEAU_MIN_FRAC, train close to val."""
    if t.n < MIN_POINTS or v.n < MIN_POINTS or t.direction != v.direction:
        return None
    since = []
    for c in (t, v):
        j = _plateau_since(c) if c.levels.size >= PLATEAU_MIN_LEVELS else None
        if j is None or (c.levels.size - j) < PLATEAU_MIN_FRAC * c.levels.size:
            return None
        since.append(int(c.edges[j]))
    ta, va = _acc_values(t), _acc_values(v)
    if ta is not None and va is not None:
        t_tail = float(np.median(ta[_tail_start(ta.size, TAIL_FRAC, 1) :]))
        v_tail = float(np.median(va[_tail_start(va.size, TAIL_FRAC, 1) :]))
        if max(t_tail, v_tail) >= UNDERFIT_MAX_ACC or t_tail - v_tail > UNDERFIT_MAX_GAP:
            return None
        what = f"accuracies end at train {_fmt(t_tail)}, val {_fmt(v_tail)} (< {UNDERFIT_MAX_ACC})"
    elif t.log and v.log:
        falls = [float(c.levels[0] - c.levels.min()) for c in (t, v)]
        if max(falls) >= UNDERFIT_MAX_DECADES:
            return None
        if abs(float(t.levels[-1] - v.levels[-1])) > UNDERFIT_MAX_LOSS_GAP:  # overfitting's business
            return None
        what = (
            f"losses fell only {10 ** falls[0]:.3g}x / {10 ** falls[1]:.3g}x, now train "
            f"{_fmt(t.level_raw(-1))}, val {_fmt(v.level_raw(-1))}"
        )
    else:
        return None
    text = f"{what}; flat since {t.where(since[0])} / {v.where(since[1])}"
    return _finding("underfitting", "warn", v, v.step_at(since[1]), text)


def _chance_level(c: _Curve, acc: np.ndarray, given: Mapping[str, float] | None) -> tuple[float, str] | None:
    """The chance level of an accuracy: given by name (or by its key, 'acc'), else inferred as 1/k."""
    for key in (c.name, split_role(c.name)[1]):
        if given and key in given:
            return float(given[key]), "given"
    levels, _ = _levels(acc)
    mid = float(np.median(acc))
    k = min(CHANCE_K, key=lambda k: abs(mid - 1.0 / k))
    target = 1.0 / k
    tol = CHANCE_INFER_REL * target
    if np.all(np.abs(levels - target) <= tol) and levels[-1] - levels[0] <= tol:
        return target, f"inferred 1/{k}"
    return None


def rule_chance(c: _Curve, given: Mapping[str, float] | None) -> Finding | None:
    """An accuracy that ends within CHANCE_MARGIN of chance and never rose 2 margins above it."""
    acc = _acc_values(c)
    if acc is None or c.n < MIN_POINTS:
        return None
    found = _chance_level(c, acc, given)
    if found is None:
        return None
    level, how = found
    levels, _ = _levels(acc)
    tail = float(levels[-1])
    if tail > level + CHANCE_MARGIN or float(levels.max()) > level + 2 * CHANCE_MARGIN:
        return None
    text = (
        f"last 5% level {_fmt(tail)}, never above {_fmt(float(levels.max()))} (5% levels); "
        f"chance {_fmt(level)} ({how}) over {c.n:,} points"
    )
    return _finding("chance", "fail", c, c.step_at(0), text)


def rule_lr_too_low(c: _Curve, lr_text: str) -> Finding | None:
    """A loss falling steadily but so slowly that a 10x lower loss needs 1/LR_LOW_DECADES_PER_RUN runs.

    On the log10 scale: the last SLOPE_FRAC's slope is an improvement larger than the noise, the
    run's length at that rate gives under LR_LOW_DECADES_PER_RUN decades, and the recent rate is
    at least LR_STEADY_FRAC of the whole run's average (not slowing down towards a floor).
    """
    if not c.log or c.n < LR_MIN_POINTS:
        return None
    slope = c.tail_slope()
    span = float(c.s[-1] - c.s[0])
    if slope is None or slope >= 0 or span <= 0:
        return None
    t0 = _tail_start(c.n, SLOPE_FRAC, 2)
    recent_drop = -slope * float(c.s[-1] - c.s[t0])
    per_run = -slope * span
    average = (float(c.levels[0]) - float(c.levels[-1])) / span
    noise = _noise(c.y, max(1, c.n - t0)) * NOISE_SIGMAS
    if recent_drop < max(noise, MEANINGFUL_DECADES / 2) or per_run >= LR_LOW_DECADES_PER_RUN:
        return None
    if average <= 0 or -slope < LR_STEADY_FRAC * average:
        return None
    runs = 1.0 / per_run
    text = (
        f"falls {per_run:.3g} decades per run length ({-slope * 1000:.3g}/1k steps), steadily: a 10x lower loss "
        f"needs ~{runs:.3g}x this run; now {_fmt(c.level_raw(-1))}{lr_text}"
    )
    return _finding("lr_too_low", "warn", c, c.step_at(0), text)


def rule_lr_too_high(c: _Curve, lr_text: str) -> Finding | None:
    """A loss that oscillates wildly and does not converge (seed 001's sign of an LR too high).

    On the log10 scale, over the last LR_HIGH_TAIL_FRAC of the points: the median jump between
    consecutive points, around their median (a steady trend cancels), is LR_HIGH_SWING_DECADES
    or more, and the median of that stretch's second half is less than LR_HIGH_FALL_SWINGS
    jumps below the median of its first half. Medians: a single spike moves neither; a steady
    divergence has small jumps (and is `divergence`'s, first in TREND_PRIORITY); a noisy loss
    that still falls is left alone.
    """
    if not c.log or c.direction == "max" or c.n < LR_HIGH_MIN_POINTS:
        return None
    t0 = _tail_start(c.n, LR_HIGH_TAIL_FRAC, LR_HIGH_MIN_POINTS // 2)
    y = c.y[t0:]
    stride = -(-(y.size - 1) // NOISE_SAMPLE)
    d = (y[1:] - y[:-1])[::stride]
    swing = float(np.median(np.abs(d - np.median(d))))
    if swing < LR_HIGH_SWING_DECADES:
        return None
    half = y.size // 2
    stride = -(-half // LEVEL_SAMPLE)
    first, second = float(np.median(y[:half:stride])), float(np.median(y[y.size - half :: stride]))
    if first - second >= LR_HIGH_FALL_SWINGS * swing:
        return None
    text = (
        f"since {c.where(t0)} it jumps a median {10**swing:.3g}x from one point to the next, while its "
        f"median went from {_fmt(c.raw(first))} to {_fmt(c.raw(second))} (halves of that stretch){lr_text}"
    )
    return _finding("lr_too_high", "fail", c, c.step_at(t0), text)


# ---------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------


def _sort_key(f: Finding) -> tuple[int, int, float]:
    step = float(f.step) if f.step is not None else math.inf
    return SEVERITY_ORDER[f.severity], RULE_ORDER.index(f.rule), step


def diagnose(
    curves: Curves,
    primary: str,
    mode: Direction | None = None,
    chance: Mapping[str, float] | None = None,
    remedies: Mapping[str, str] | None = None,
) -> list[Finding]:
    """At most MAX_FINDINGS findings about a run's curves, most severe first.

    `primary` and `mode` name the metric the run optimises and its direction; `chance` maps
    accuracy metrics (by name, or by key such as "acc") to their chance level when known;
    `remedies` maps rule ids to the trainer spec's own remedies, which replace the generic ones.
    Trend rules (divergence, plateau, lr_too_high) look at the core metrics: the primary, its
    train/val partner and the train/val loss; lr_too_low at the loss and the primary,
    no_progress at the primary (unless a core loss is lr_too_high: that explains it); spikes
    at losses and the primary; chance at every accuracy; overfitting and underfitting at
    every train/val pair.
    """
    findings: list[Finding] = []
    nf = rule_nonfinite(curves)
    if nf:
        findings.append(nf)

    primary_name = find_name(curves.series, primary) or primary
    cache: dict[str, _Curve | None] = {}

    def curve(name: str) -> _Curve | None:
        if name not in cache:
            s = curves.series.get(name)
            direction = (mode or direction_of(name)) if name == primary_name else direction_of(name)
            cache[name] = _curve(s, direction) if s is not None and len(s) else None
        return cache[name]

    pairs = pair_series(curves.series)
    partner = {a: b for p in pairs for a, b in (p, p[::-1])}
    core = [primary_name]
    if primary_name in partner:
        core.append(partner[primary_name])
    for t, v in pairs:
        if split_role(t)[1] == "loss":
            core += [t, v]
    core = list(dict.fromkeys(n for n in core if n in curves.series))

    trend: dict[str, Finding] = {}  # one trend finding per metric, by TREND_PRIORITY

    def offer(f: Finding | None, *names: str) -> None:
        if f is None:
            return
        for name in names or (f.metric,):
            held = trend.get(name)
            if held is not None and TREND_PRIORITY.index(held.rule) <= TREND_PRIORITY.index(f.rule):
                return
        for name in names or (f.metric,):
            trend[name] = f

    train_improving: dict[str, bool] = {}
    for t, v in pairs:
        ct, cv = curve(t), curve(v)
        if ct is None or cv is None:
            continue
        offer(rule_overfitting(ct, cv), v)
        offer(rule_underfitting(ct, cv), t, v)
        slope = ct.tail_slope()
        train_improving[v] = slope is not None and slope < 0
    for name in core:
        c = curve(name)
        if c is None:
            continue
        if not train_improving.get(name, False):  # a val rise while train improves is overfitting
            offer(rule_divergence(c))
        offer(rule_plateau(c))
    for name in curves.series:
        c = curve(name) if is_acc(name) else None
        if c is not None:
            offer(rule_chance(c, chance))
    loss_name = next((t for t, _ in pairs if split_role(t)[1] == "loss"), None)
    if loss_name is None:
        loss_name = next((n for n in curves.series if split_role(n)[1] == "loss"), None)
    lr_text = _lr_text(curves)
    oscillating = False
    for name in dict.fromkeys(n for n in (*core, loss_name) if n):
        c = curve(name)
        if c is not None:
            high = rule_lr_too_high(c, lr_text)
            offer(high)
            oscillating |= high is not None and trend.get(name) is high
    for name in dict.fromkeys(n for n in (loss_name, primary_name) if n):
        c = curve(name)
        if c is not None:
            offer(rule_lr_too_low(c, lr_text))
    pc = curve(primary_name)
    if pc is not None and not oscillating:  # a loss bouncing at its level explains a primary that does not progress
        offer(rule_no_progress(pc))
    findings += list({id(f): f for f in trend.values()}.values())

    # A loss bouncing wildly (lr_too_high) has big excursions by nature: they are not transient spikes.
    spiky = [
        n
        for n in curves.series
        if (n == primary_name or direction_of(n) == "min") and getattr(trend.get(n), "rule", None) != "lr_too_high"
    ]
    for name in spiky:
        c = curve(name)
        if c is not None and (c.log or name == primary_name):
            f = rule_spike(c)
            if f:
                findings.append(f)
    findings.sort(key=_sort_key)
    findings = findings[:MAX_FINDINGS]
    if remedies:
        for f in findings:
            f.remedy = remedy(f.rule, is_rl(f.metric), remedies)
    return findings


def _lr_text(curves: Curves) -> str:
    name = next((n for n in curves.series if is_lr(n)), None)
    if name is None:
        return ""
    values = curves.series[name].values()
    for start in range(values.size, 0, -LR_LAST_WINDOW):  # the last finite value, from the end
        window = values[max(0, start - LR_LAST_WINDOW) : start]
        finite = np.flatnonzero(np.isfinite(window))
        if finite.size:
            return f"; {name} = {_fmt(float(window[finite[-1]]))}"
    return ""
