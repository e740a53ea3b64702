"""A run's curves in at most about 1,500 tokens, whatever its length: what `summarize_run` returns.

The primary metric first, then its train/val partner, the losses and the rest, each as
fixed-size statistics (`stats.MetricStats`); metrics that do not fit in the budget are
named, not dropped silently. Diagnoses come from every value (`findings.diagnose`), never a
sample, so a single spike or NaN in a million points is reported.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mcp_server import budget
from mcp_server.curves import names
from mcp_server.curves.findings import Finding, diagnose
from mcp_server.curves.load import Loaded, loaded
from mcp_server.curves.names import direction_of, pair_series
from mcp_server.curves.readers import signature
from mcp_server.curves.stats import MetricStats, metric_stats
from mcp_server.curves.store import Curves

if TYPE_CHECKING:
    from mcp_server.rundir import Manifest

# The summary's share of an answer (budget.ANSWER_CHARS, ~1,500 tokens): the rest is the run's row.
BUDGET_CHARS = budget.ANSWER_CHARS - 1600
MAX_OMITTED_NAMES = 12


class CurveSummary(BaseModel):
    """Bounded summary of a run's metrics: per-metric statistics, diagnoses and a headline."""

    headline: str
    source: str | None = Field(description="the file the metrics come from, as '<reader>: <path>'")
    also_found: list[str] = Field(description="other files with metrics (not used: the same run's other logs)")
    records: int
    skipped_lines: int = Field(description="torn or malformed lines or records, skipped")
    primary_metric: str
    primary: MetricStats | None
    findings: list[Finding] = Field(description="diagnoses, most severe first, each with its step and remedy")
    metrics: list[MetricStats] = Field(description="the primary's partner, losses, then the rest, in budget")
    omitted_metrics: list[str] = Field(description="metrics left out to stay in budget (ask for them by name)")
    events: dict[str, int]
    done_reason: str | None
    last_error: str | None


def resolve_metric(curves: Curves, wanted: str | None) -> str | None:
    """`wanted` itself or its spelling in this file ('val/acc' is 'val_acc' in a CSV); without
    one, the metric a person would look at first: validation loss or accuracy, then any loss."""
    logged = list(curves.series)
    if wanted and (match := find_metric(curves, wanted)):
        return match
    for test in (
        lambda n: "val" in n.lower() and "loss" in n.lower(),
        lambda n: "eval_loss" in n.lower(),
        lambda n: "val" in n.lower() and "acc" in n.lower(),
        lambda n: "loss" in n.lower(),
    ):
        match = next((n for n in logged if test(n)), None)
        if match:
            return match
    return logged[0] if logged else None


def find_metric(curves: Curves, wanted: str) -> str | None:
    """`wanted` itself, or the series spelled the same but for case and separators, or None."""
    return names.find(curves.series, wanted)


def _order(curves: Curves, primary: str | None) -> list[str]:
    """The metrics after the primary, most telling first."""
    pairs = pair_series(curves.series)
    partner = {a: b for p in pairs for a, b in (p, p[::-1])}
    first = [partner[primary]] if primary in partner else []
    losses = [n for p in pairs for n in p if "loss" in n.lower()]
    rest = sorted(curves.series, key=lambda n: ("loss" not in n.lower(), direction_of(n) is None, n))
    return [n for n in dict.fromkeys(first + losses + rest) if n != primary]


def summarize(
    loaded: Loaded,
    primary_metric: str | None,
    mode: Literal["min", "max"] | None = None,
    chance: Mapping[str, float] | None = None,
    remedies: Mapping[str, str] | None = None,
) -> CurveSummary:
    """Summarise curves read by `load.load` within BUDGET_CHARS of JSON; `chance` and `remedies`
    (the run's trainer spec's, by rule id) go to `findings.diagnose`."""
    curves = loaded.curves
    name = resolve_metric(curves, primary_metric)
    primary = metric_stats(curves.series[name], mode or "auto") if name else None
    findings = diagnose(curves, name, mode, chance, remedies) if name else []
    summary = CurveSummary(
        headline=headline(curves, name or primary_metric or "?", primary, findings),
        source=loaded.source,
        also_found=loaded.also_found,
        records=curves.records,
        skipped_lines=curves.skipped,
        primary_metric=name or primary_metric or "",
        primary=primary,
        findings=findings,
        metrics=[],
        omitted_metrics=[],
        events=curves.events,
        done_reason=curves.done_reason,
        last_error=curves.last_error,
    )
    used = len(summary.model_dump_json())
    order = _order(curves, name)
    for i, other in enumerate(order):
        stats = metric_stats(curves.series[other])
        size = len(stats.model_dump_json()) + 1
        if used + size > BUDGET_CHARS:
            left = order[i:]
            summary.omitted_metrics = [budget.clip(n, 60) or "" for n in left[:MAX_OMITTED_NAMES]] + (
                [f"... and {len(left) - MAX_OMITTED_NAMES} more"] if len(left) > MAX_OMITTED_NAMES else []
            )
            break
        summary.metrics.append(stats)
        used += size
    return summary


CACHED_SUMMARIES = 256  # run folders whose last summary is kept (about 6 KB each)
_summaries: OrderedDict[tuple, tuple[tuple, CurveSummary]] = OrderedDict()
_summaries_lock = threading.Lock()


def summarize_run_dir(run_dir: Path, manifest: Manifest, copy: bool = True) -> CurveSummary:
    """A launched run's curves, from whatever its trainer writes (our metrics stream first), with
    the primary metric of its spec. While no log of the run changed (`readers.signature`: a few
    stat calls) the last summary is returned as it was; after a change only what was appended is
    read. `copy=False` returns the kept summary itself, for a caller that only reads it."""
    chance = manifest.chance or None
    key = (
        str(run_dir),
        manifest.primary_metric,
        manifest.primary_mode,
        tuple(sorted((chance or {}).items())),
        tuple(sorted((manifest.remedies or {}).items())),
    )
    mark = signature(run_dir)
    with _summaries_lock:
        kept = _summaries.get(key)
        if kept is not None and kept[0] == mark:
            _summaries.move_to_end(key)
            return kept[1].model_copy(deep=True) if copy else kept[1]
    with loaded(run_dir) as curves:
        summary = summarize(
            curves, manifest.primary_metric, manifest.primary_mode, chance=chance, remedies=manifest.remedies
        )
    with _summaries_lock:
        _summaries[key] = (mark, summary)
        _summaries.move_to_end(key)
        while len(_summaries) > CACHED_SUMMARIES:
            _summaries.popitem(last=False)
    return summary.model_copy(deep=True) if copy else summary


def serious_findings(findings: list[Finding]) -> list[Finding]:
    """The findings that say something is wrong (warn and fail), not the notes."""
    return [f for f in findings if f.severity in ("fail", "warn")]


def headline(curves: Curves, name: str, primary: MetricStats | None, findings: list[Finding]) -> str:
    """One line: the primary's best and last, the worst findings, and how the run ended."""
    if not curves.series:
        text = "no metrics logged yet"
    elif primary is None:
        text = f"{curves.records} records, none of {name}"
    elif primary.best is not None and primary.best.value is not None:
        where = f"epoch {primary.best.epoch:g}" if primary.best.epoch is not None else f"step {primary.best.step:g}"
        last = primary.last.value if primary.last is not None else None
        text = f"best {name} {primary.best.value:.4g} at {where}; " + (
            f"last {last:.4g}" if last is not None else "last value non-finite"
        )
    else:
        text = f"{name}: no finite value in {primary.count} points"
    serious = serious_findings(findings)
    if serious:
        text += "; " + ", ".join(f"{f.rule} ({f.metric})" for f in serious[:3])
    if curves.done_reason:
        text += f"; ended: {curves.done_reason}"
    if curves.last_error:
        text += f"; error: {curves.last_error}"
    return text
