"""Reading a run's metrics stream and summarising it in a few hundred tokens.

The stream is JSON lines: records `{"t", "step", "epoch"?, "split", <name>: number...}` and
events `{"t", "event", ...}`. A file being written may end in a torn line; it is skipped,
as is any line that is not a JSON object. Non-finite values arrive as "nan"/"inf" strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

RESERVED = frozenset({"t", "step", "epoch", "split", "event"})
HIGHER_IS_BETTER = ("acc", "psnr", "reward", "return", "f1", "iou", "auc", "score", "ssim", "food")
LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "mse", "mae", "nll", "poison")
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "NaN": math.nan, "Infinity": math.inf}


class Point(BaseModel):
    """One value of a metric and where it was logged."""

    value: float | None
    step: int | None
    epoch: int | None


class MetricSummary(BaseModel):
    """First, last and best value of one metric, with a one-line trend."""

    name: str
    count: int
    direction: Literal["min", "max"] | None
    first: Point
    last: Point
    best: Point | None
    nonfinite_count: int
    first_nonfinite: Point | None = None  # where the first NaN/inf was logged (its value is None)
    trend: str


class RunSummary(BaseModel):
    """A bounded summary of a metrics stream, whatever its length."""

    records: int
    skipped_lines: int
    primary_metric: str
    primary: MetricSummary | None
    metrics: list[MetricSummary]
    events: dict[str, int]
    done_reason: str | None
    last_error: str | None
    headline: str


@dataclass
class _Series:
    name: str
    points: list[tuple[float, int | None, int | None]] = field(default_factory=list)


def iter_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    """Yield each complete line as a dict, or None for a line that is not a JSON object.

    The last line is only read if it ends with a newline: a writer may be half-way through it.
    """
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                obj = json.loads(raw)
            except ValueError:
                yield None
                continue
            yield obj if isinstance(obj, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    return None


def direction_of(name: str) -> Literal["min", "max"] | None:
    """Whether lower or higher is better for a metric, guessed from its name."""
    base = name.rsplit("/", 1)[-1].lower()
    if any(k in base for k in HIGHER_IS_BETTER):
        return "max"
    if any(k in base for k in LOWER_IS_BETTER):
        return "min"
    return None


def summarize_file(path: Path, primary_metric: str, primary_mode: Literal["min", "max"]) -> RunSummary:
    """Summarise a metrics stream file; a missing file gives an empty summary."""
    series: dict[str, _Series] = {}
    events: dict[str, int] = {}
    done_reason = last_error = None
    records = skipped = 0
    lines = iter_lines(path) if path.is_file() else iter(())
    for obj in lines:
        if obj is None:
            skipped += 1
            continue
        if "event" in obj:
            name = str(obj["event"])
            events[name] = events.get(name, 0) + 1
            if name == "done":
                done_reason = str(obj.get("reason"))
            elif name == "error":
                last_error = str(obj.get("message"))[:300]
            continue
        records += 1
        split = obj.get("split")
        step, epoch = obj.get("step"), obj.get("epoch")
        step = step if isinstance(step, int) else None
        epoch = epoch if isinstance(epoch, int) else None
        for key, raw in obj.items():
            value = _number(raw) if key not in RESERVED else None
            if value is None:
                continue
            name = f"{split}/{key}" if split else key
            series.setdefault(name, _Series(name)).points.append((value, step, epoch))

    summaries = []
    for s in series.values():
        mode = primary_mode if s.name == primary_metric else direction_of(s.name)
        summaries.append(_summarize_series(s, mode))
    primary = next((m for m in summaries if m.name == primary_metric), None)
    return RunSummary(
        records=records,
        skipped_lines=skipped,
        primary_metric=primary_metric,
        primary=primary,
        metrics=summaries,
        events=events,
        done_reason=done_reason,
        last_error=last_error,
        headline=_headline(primary, primary_metric, records, done_reason, last_error),
    )


def _point(p: tuple[float, int | None, int | None]) -> Point:
    value = p[0] if math.isfinite(p[0]) else None
    return Point(value=value, step=p[1], epoch=p[2])


def _summarize_series(s: _Series, mode: Literal["min", "max"] | None) -> MetricSummary:
    finite = [p for p in s.points if math.isfinite(p[0])]
    best = None
    if mode and finite:
        pick = min if mode == "min" else max
        best = pick(finite, key=lambda p: p[0])  # the first of equal bests: when it was reached
    return MetricSummary(
        name=s.name,
        count=len(s.points),
        direction=mode,
        first=_point(s.points[0]),
        last=_point(s.points[-1]),
        best=_point(best) if best else None,
        nonfinite_count=len(s.points) - len(finite),
        first_nonfinite=next((_point(p) for p in s.points if not math.isfinite(p[0])), None),
        trend=_trend(s, finite, mode, best),
    )


def _where(p: tuple[float, int | None, int | None]) -> str:
    return f"epoch {p[2]}" if p[2] is not None else f"step {p[1]}"


def _trend(s: _Series, finite: list, mode: str | None, best: tuple | None) -> str:
    if not finite:
        return f"no finite value in {len(s.points)} points"
    first, last = finite[0][0], finite[-1][0]
    change = last - first
    scale = max(abs(first), abs(last), 1e-12)
    if abs(change) / scale < 0.01:
        word = "flat"
    elif mode is None:
        word = "rose" if change > 0 else "fell"
    else:
        better = change < 0 if mode == "min" else change > 0
        word = "improved" if better else "worsened"
    text = f"{word} {first:.4g} -> {last:.4g} over {len(s.points)} points"
    if best is not None:
        text += f"; best {best[0]:.4g} at {_where(best)}"
        since = len(finite) - 1 - finite.index(best)
        if since:
            text += f", none better in the {since} points since"
    if len(finite) < len(s.points):
        first_bad = next(p for p in s.points if not math.isfinite(p[0]))
        text += f"; NON-FINITE from {_where(first_bad)}"
    return text


def _headline(
    primary: MetricSummary | None, name: str, records: int, done: str | None, error: str | None
) -> str:
    if records == 0:
        text = "no metrics logged yet"
    elif primary is None:
        text = f"{records} records, none of {name}"
    elif primary.best is not None and primary.best.value is not None:
        where = f"epoch {primary.best.epoch}" if primary.best.epoch is not None else f"step {primary.best.step}"
        last = primary.last.value
        text = f"best {name} {primary.best.value:.4g} at {where}; last {last:.4g}" if last is not None else (
            f"best {name} {primary.best.value:.4g} at {where}; last value non-finite"
        )
    else:
        text = f"{name}: {primary.trend}"
    if done:
        text += f"; ended: {done}"
    if error:
        text += f"; error: {error}"
    return text
