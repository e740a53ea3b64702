"""The facts a hand-off note states that the server knows better than the agent: which runs are
going, how the latest ones ended against a baseline, and which findings are still open.

An agent that writes "the run finished at 20.1 dB" may be wrong or out of date; these lines
come from the run folders at the moment the note is written, so the next session can trust
them and tell them apart from the agent's own account (seed 003's note mixes both).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from mcp_server import budget, paths, runs
from mcp_server.curves.summary import CurveSummary
from mcp_server.errors import InvalidInput, TrainguardError
from mcp_server.rundir import TERMINAL, RunDir, newest_runs

MAX_SCANNED = 60  # newest run folders looked at: older ones are history, not state
MAX_GOING = 6
MAX_RESULTS = 5
MAX_FINDINGS = 6
LINE_CHARS = 220
FACTS_CHARS = 1100  # the whole section, within the note's budget (handoff.NOTE_CHARS)


class RunFact(BaseModel):
    """One run as the note states it."""

    run_id: str
    experiment: str
    status: str
    queue_position: int | None = None
    headline: str
    metric: str | None = None
    best: float | None = None
    best_epoch: float | None = None
    vs_baseline: float | None = Field(None, description="best minus the baseline (positive = higher)")


class Baseline(BaseModel):
    """What the latest results are measured against: a run's best, or a figure given."""

    label: str  # the run id, or "given"
    value: float
    metric: str | None  # the run's primary metric; None for a figure (it goes with the newest result's)


class Facts(BaseModel):
    """What the server knew when the note was written."""

    going: list[RunFact]
    going_total: int
    results: list[RunFact]
    findings: list[str]
    findings_total: int
    baseline: Baseline | None
    sweeps: list[str]
    scanned: int


MAX_SWEEPS = 4


def sweep_lines(project: Path) -> list[str]:
    """Sweeps in progress, one line each: trials done of the total, by status, and the best so
    far with its parameters (from each sweep's state.json, as sweep_status reads it)."""
    from mcp_server.sweeps import api as sweeps

    lines = []
    for folder in sweeps.sweepdir.all_sweeps(paths.runs_root(project)):
        try:
            state = folder.read_state()
            if state.status in sweeps.SWEEP_DONE:
                continue
            st = sweeps.sweep_status(folder.sweep_id, project=project, limit=1, revive=False)
        except (OSError, TrainguardError):
            continue
        counts = ", ".join(f"{n} {k}" for k, n in st.counts.items())
        done = sum(st.counts.values())
        line = f"{st.sweep_id} ({st.experiment}, {st.settings['strategy']}): {done}/{st.trials_total} trials"
        line += f" ({counts})" if counts else ""
        if st.best is not None and st.best.best is not None:
            params = ", ".join(f"{k}={v}" for k, v in st.best.params.items())
            line += f"; best {st.metric} {st.best.best:.4g} at {st.best.at} (trial {st.best.trial}: {params})"
        lines.append(line)
        if len(lines) == MAX_SWEEPS:
            break
    return lines


def _summary(run_id: str, project: Path) -> tuple[runs.RunInfo, CurveSummary] | None:
    try:
        return runs.summary(run_id, project)
    except (TrainguardError, OSError):  # a folder damaged or removed meanwhile: not a fact to state
        return None


def _fact(info: runs.RunInfo, summ: CurveSummary) -> RunFact:
    best = summ.primary.best if summ.primary else None
    return RunFact(
        run_id=info.run_id,
        experiment=info.experiment,
        status=info.status,
        queue_position=info.queue_position,
        headline=budget.clip(info.headline, 160) or "",
        metric=summ.primary_metric or None,
        best=best.value if best else None,
        best_epoch=best.epoch if best else None,
    )


def resolve_baseline(baseline: str | None, project: Path) -> Baseline | None:
    """`baseline` as compare_runs takes it: a run id (its best primary value) or a figure.

    Raises:
        InvalidInput: if it is neither a finite number nor a run with a logged primary metric.
        NotFound: for a run id that does not exist.
    """
    if baseline is None or not baseline.strip():
        return None
    try:
        value = float(baseline)
    except ValueError:
        value = math.nan
    if math.isfinite(value):
        return Baseline(label="given", value=value, metric=None)
    info, summ = runs.summary(baseline.strip(), project)
    best = summ.primary.best if summ.primary else None
    if best is None or best.value is None:
        raise InvalidInput(
            f"baseline run {info.run_id} has no finite {summ.primary_metric or 'primary metric'} yet; "
            "pass another run id or a figure such as 20.47."
        )
    return Baseline(label=info.run_id, value=best.value, metric=summ.primary_metric)


def gather(project: Path, baseline: Baseline | None = None) -> Facts:
    """The newest MAX_SCANNED runs: those still going, the latest finished ones (best primary,
    against `baseline` where its metric is theirs), and their warn/fail findings."""
    found = newest_runs(paths.runs_root(project))[:MAX_SCANNED]
    going_ids: list[str] = []
    finished_ids: list[str] = []
    for path in found:
        run = RunDir(Path(path))
        try:
            status = runs.refresh(run).status
        except (TrainguardError, OSError):
            continue
        (finished_ids if status in TERMINAL else going_ids).append(run.run_id)
    going: list[RunFact] = []
    results: list[RunFact] = []
    findings: list[str] = []
    for ids, into, most in ((going_ids, going, MAX_GOING), (finished_ids, results, MAX_RESULTS)):
        for run_id in ids[:most]:
            got = _summary(run_id, project)
            if got is None:
                continue
            into.append(_fact(*got))
            findings += [
                budget.clip(f"{run_id}: {f.severity} {f.rule} on {f.metric}{_at(f.step)}: {f.evidence}", 200) or ""
                for f in got[1].findings
                if f.severity in ("fail", "warn")
            ]
    if baseline is not None and results:
        metric = baseline.metric or results[0].metric
        for row in results:
            if row.best is not None and row.metric == metric:
                row.vs_baseline = round(row.best - baseline.value, 6)
    return Facts(
        going=going,
        going_total=len(going_ids),
        results=results,
        findings=findings[:MAX_FINDINGS],
        findings_total=len(findings),
        baseline=baseline,
        sweeps=sweep_lines(project),
        scanned=len(found),
    )


def _at(step: float | None) -> str:
    return "" if step is None else f" at step {step:g}"


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _run_line(row: RunFact) -> str:
    where = f" (queue position {row.queue_position})" if row.queue_position else ""
    parts = [f"- {row.run_id} ({row.experiment}): {row.status}{where}"]
    if row.vs_baseline is not None:
        parts.append(f"{row.vs_baseline:+.4g} vs baseline")
    if row.headline:  # the best primary value and its epoch, the last, the worst findings
        parts.append(row.headline)
    elif row.best is not None:
        at = f" at epoch {row.best_epoch:g}" if row.best_epoch is not None else ""
        parts.append(f"best {row.metric} {_number(row.best)}{at}")
    return budget.clip("; ".join(parts), LINE_CHARS) or ""


def render(facts: Facts, stamp: str) -> str:
    """The facts as the note's `<server_facts>` section, within FACTS_CHARS (the lists shortened
    from their ends, saying so)."""
    head = [f"Stated by trainguard from the run folders at {stamp}, not by the agent."]
    going = [f"Runs going ({facts.going_total}):"] + ([_run_line(r) for r in facts.going] or ["- none"])
    if facts.going_total > len(facts.going):
        going.append(f"- ... {facts.going_total - len(facts.going)} more: list_runs has them")
    base = facts.baseline
    against = f"; baseline {_number(base.value)} ({base.label})" if base else ""
    results = [f"Latest results, newest first{against}:"] + ([_run_line(r) for r in facts.results] or ["- none yet"])
    findings = [f"Open findings (warn/fail) of these runs ({facts.findings_total}):"] + (
        [f"- {line}" for line in facts.findings] or ["- none"]
    )
    sweeps = ["Sweeps in progress:"] + [f"- {budget.clip(s, LINE_CHARS)}" for s in facts.sweeps] if facts.sweeps else []
    return _within([*head, *going, *results, *findings, *sweeps], FACTS_CHARS)


def _within(lines: list[str], limit: int) -> str:
    """`lines` joined, the later ones left out (with a count) once `limit` would be passed."""
    kept: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        if used + len(line) + 1 > limit - 60:
            kept.append(f"[... {len(lines) - i} more lines left out; list_runs and summarize_run have them]")
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)
