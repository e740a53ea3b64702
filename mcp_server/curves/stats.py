"""Fixed-size statistics of one metric, however many points it has: what `summarize_run` shows.

`metric_stats` condenses one `Series` (possibly millions of points) into a `MetricStats`: first /
last / best, non-finite values, a robust tail level, the recent slope, throughput and a
spike-preserving sparkline. Everything is vectorised numpy; only finite values enter the
statistics, non-finite ones are counted and located.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from mcp_server.curves.names import Direction, direction_of
from mcp_server.curves.store import Series

Number = int | float

SIG_FIGS = 4  # 4 significant figures: enough to compare runs, short in JSON
SPARK_BUCKETS = 32  # sparkline width: 32 characters read at a glance and cost ~30 tokens
SPARK_CHARS = "▁▂▃▄▅▆▇█"
SPARK_EMPTY = "·"  # a bucket with no finite value
SPARK_LOG_RATIO = 10.0  # a positive curve spanning >= 1 decade is drawn on a log scale, else its tail is flat
TAIL_FRAC = 0.05  # the tail level is the median of the last 5% of finite values (robust to a final spike)
SLOPE_FRAC = 0.25  # the slope is fitted to the last 25%: recent enough to be current, long enough to beat noise
THROUGHPUT_FRAC = 0.25  # steps/s over the last 25% of timed points: the current speed, for an ETA


class Point(BaseModel):
    """One logged value and where it was logged (value None when non-finite)."""

    value: float | None
    step: Number | None
    epoch: Number | None = None


class MetricStats(BaseModel):
    """Fixed-size statistics of one metric, however many points it has."""

    name: str
    count: int
    direction: Direction | None
    first: Point | None = None
    last: Point | None = None
    best: Point | None = Field(None, description="the first time the best finite value was reached")
    nonfinite: int = 0
    first_nonfinite_step: Number | None = None
    tail_median: float | None = Field(None, description="median of the last 5% of finite values")
    slope_per_1k_steps: float | None = Field(
        None, description="least-squares slope over the last 25% of finite points, per 1,000 steps"
    )
    slope_scale: Literal["log10", "linear"] | None = Field(
        None, description="log10: decades per 1k steps (positive metrics not maximised); linear: units per 1k"
    )
    steps_per_second: float | None = Field(None, description="over the last 25% of points with a wall time")
    spark: str = Field("", description="bucket means, oldest left; '·' = no finite value")
    spark_worst: str = Field(
        "", description="bucket worst values (max for min/unknown metrics, min for max metrics): shows spikes"
    )
    spark_scale: Literal["log10", "linear"] = "linear"
    spark_range: tuple[float, float] | None = Field(None, description="[lowest, highest] finite value drawn")

    def eta_seconds(self, target_step: float) -> float | None:
        """Seconds until `target_step` at the current throughput, None when it is unknown."""
        if not self.steps_per_second or self.last is None or self.last.step is None:
            return None
        return max(0.0, float(target_step) - float(self.last.step)) / self.steps_per_second


@dataclass(frozen=True)
class Downsampled:
    """A curve cut into buckets of consecutive points; NaN where a bucket has no finite value."""

    first_step: np.ndarray
    last_step: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    means: np.ndarray


def _r(x: float | None) -> float | None:
    """`x` rounded to SIG_FIGS significant figures; None for None or a non-finite value."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{SIG_FIGS}g}")


def _num(x: float) -> Number | None:
    """A step or epoch: an int when integral, else rounded; None when unknown."""
    if not math.isfinite(x):
        return None
    return int(x) if float(x).is_integer() else _r(x)


def _fmt(x: float) -> str:
    return f"{x:.{SIG_FIGS}g}"


def _fmt_step(x: Number | None) -> str:
    if x is None:
        return "?"
    return f"{x:,}" if isinstance(x, int) else _fmt(x)


def _use_log(values: np.ndarray, direction: Direction | None) -> bool:
    """Positive metrics that are not maximised are analysed on a log10 scale."""
    return direction != "max" and values.size > 0 and bool(np.all(values > 0))


def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Least-squares slope of y on x; None when x does not vary."""
    n = x.size
    if n < 2:
        return None
    # From sums, without a temporary array (a run's last 25% can be 250,000 points); the
    # cancellation costs at most a few of float64's 16 digits for steps up to 1e9. einsum, not
    # np.dot: a dot product goes to the BLAS, whose threads wait on a busy machine's cores
    # (8 ms instead of 0.2 ms per call, seen on 2 cores).
    xm, ym = float(x.mean()), float(y.mean())
    xx = float(np.einsum("i,i->", x, x))
    den = xx - n * xm * xm
    if den <= 1e-12 * max(xx, 1e-300):
        return None
    return (float(np.einsum("i,i->", x, y)) - n * xm * ym) / den


def _tail_start(n: int, frac: float, at_least: int) -> int:
    return max(0, n - max(at_least, int(math.ceil(n * frac))))


def downsample(values: np.ndarray, steps: np.ndarray, buckets: int = SPARK_BUCKETS) -> Downsampled:
    """Min, max and mean of each of `buckets` runs of consecutive points (NaN-aware, inf ignored).

    The min and max keep every spike: a single point far from its neighbours is the max (or
    min) of its bucket whatever the bucket's length.
    """
    n = values.size
    k = min(buckets, n)
    if k == 0:
        empty = np.empty(0)
        return Downsampled(empty, empty, empty, empty, empty)
    edges = np.linspace(0, n, k + 1).astype(np.int64)
    starts = edges[:-1]
    finite = np.isfinite(values)
    if finite.all():  # the common case, without the NaN bookkeeping
        mins, maxs = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        means = np.add.reduceat(values, starts) / np.diff(edges)
    else:
        clean = np.where(finite, values, np.nan)
        mins = np.fmin.reduceat(clean, starts)
        maxs = np.fmax.reduceat(clean, starts)
        counts = np.add.reduceat(finite.astype(np.int64), starts)
        sums = np.add.reduceat(np.where(finite, values, 0.0), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Downsampled(steps[starts], steps[edges[1:] - 1], mins, maxs, means)


def _spark_line(levels: np.ndarray, lo: float, hi: float) -> str:
    """One character per level on [lo, hi] (already on the drawing scale)."""
    top = len(SPARK_CHARS) - 1
    span = hi - lo
    chars = []
    for x in levels.tolist():
        if not math.isfinite(x):
            chars.append(SPARK_EMPTY)
        elif span <= 0:
            chars.append(SPARK_CHARS[0])
        else:
            chars.append(SPARK_CHARS[min(top, max(0, int(round((x - lo) / span * top))))])
    return "".join(chars)


def sparklines(ds: Downsampled, direction: Direction | None) -> tuple[str, str, str, tuple[float, float] | None]:
    """(means line, worst-values line, scale, (lo, hi)) sharing one scale.

    The worst line draws each bucket's max (its min for "max" metrics), so a one-point spike in a
    million points is a full-height character in its bucket.
    """
    if ds.means.size == 0 or not np.isfinite(ds.mins).any():
        return SPARK_EMPTY * ds.means.size, SPARK_EMPTY * ds.means.size, "linear", None
    lo, hi = float(np.nanmin(ds.mins)), float(np.nanmax(ds.maxs))
    worst = ds.mins if direction == "max" else ds.maxs
    means = ds.means
    scale = "linear"
    if lo > 0 and hi / lo >= SPARK_LOG_RATIO:
        scale = "log10"
        with np.errstate(invalid="ignore", divide="ignore"):
            means, worst = np.log10(means), np.log10(worst)
        draw_lo, draw_hi = math.log10(lo), math.log10(hi)
    else:
        draw_lo, draw_hi = lo, hi
    return (
        _spark_line(means, draw_lo, draw_hi),
        _spark_line(worst, draw_lo, draw_hi),
        scale,
        (_r(lo) or 0.0, _r(hi) or 0.0),
    )


def _point(values: np.ndarray, steps: np.ndarray, epochs: np.ndarray, i: int) -> Point:
    return Point(value=_r(float(values[i])), step=_num(float(steps[i])), epoch=_num(float(epochs[i])))


def _throughput(steps: np.ndarray, times: np.ndarray) -> float | None:
    """Steps per second over the last THROUGHPUT_FRAC of the points with a wall time."""
    known = np.isfinite(times)
    if known.all():  # every point timed: the tail's ends by arithmetic, no index array
        if times.size < 2:
            return None
        first, last = _tail_start(times.size, THROUGHPUT_FRAC, 2), times.size - 1
    else:
        timed = np.flatnonzero(known)
        if timed.size < 2:
            return None
        first, last = int(timed[_tail_start(timed.size, THROUGHPUT_FRAC, 2)]), int(timed[-1])
    dt = float(times[last] - times[first])
    ds = float(steps[last] - steps[first])
    return _r(ds / dt) if dt > 0 and ds > 0 else None


def metric_stats(
    series: Series, direction: Direction | None | Literal["auto"] = "auto", buckets: int = SPARK_BUCKETS
) -> MetricStats:
    """Fixed-size statistics of one series; `direction` "auto" guesses it from the name."""
    if direction == "auto":
        direction = direction_of(series.name)
    values, steps, epochs = series.values(), series.steps(), series.epochs()
    n = values.size
    stats = MetricStats(name=series.name, count=n, direction=direction)
    if n == 0:
        return stats
    finite = np.isfinite(values)
    every = bool(finite.all())  # the common case: views, no gathers
    fidx = None if every else np.flatnonzero(finite)
    stats.first = _point(values, steps, epochs, 0)
    stats.last = _point(values, steps, epochs, n - 1)
    stats.nonfinite = 0 if every else int(n - fidx.size)
    if stats.nonfinite:
        stats.first_nonfinite_step = _num(float(steps[int(np.argmin(finite))]))
    if every or fidx.size:
        fv, fsteps = (values, steps) if every else (values[fidx], steps[fidx])
        if direction is not None:
            j = int(np.argmin(fv) if direction == "min" else np.argmax(fv))  # argmin/argmax: the first
            stats.best = _point(values, steps, epochs, j if every else int(fidx[j]))
        stats.tail_median = _r(float(np.median(fv[_tail_start(fv.size, TAIL_FRAC, 1) :])))
        t0 = _tail_start(fv.size, SLOPE_FRAC, 2)
        log = _use_log(fv[t0:], direction)
        ys = np.log10(fv[t0:]) if log else fv[t0:]
        slope = _slope(fsteps[t0:], ys)
        if slope is not None:
            stats.slope_per_1k_steps = _r(slope * 1000.0)
            stats.slope_scale = "log10" if log else "linear"
    stats.steps_per_second = _throughput(steps, series.times())
    spark, worst, scale, rng = sparklines(downsample(values, steps, buckets), direction)
    stats.spark, stats.spark_worst, stats.spark_scale, stats.spark_range = spark, worst, scale, rng
    return stats
