"""`compare_runs`: several runs' (or one experiment's newest finished runs') best value of one
metric in a table, best first, with the hyperparameters that differ between them and each run's
distance to a baseline (seed 003: "19.78 dB vs 20.47 baseline").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mcp_server import budget, ledger, paths
from mcp_server.curves.load import loaded
from mcp_server.curves.names import direction_of
from mcp_server.curves.stats import metric_stats
from mcp_server.curves.summary import find_metric
from mcp_server.errors import InvalidInput, NotFound
from mcp_server.rundir import TERMINAL, RunDir, open_run
from mcp_server.runs import refresh

MAX_RUNS = 20
MAX_DIFFERING = 8  # hyperparameters shown per row; the note names the rest
DIFFERS_CHARS = 1200  # what the rows' `differs` may take together (20 rows of ~200 characters beside)
MAX_SAME = 20


class RunRow(BaseModel):
    run_id: str
    experiment: str
    status: str
    best: float | None
    best_step: float | None
    best_epoch: float | None
    last: float | None
    points: int
    vs_baseline: float | None = Field(None, description="best minus the baseline's (positive = higher)")
    differs: dict[str, Any] = Field(description="this run's values of the hyperparameters that differ")


class Comparison(BaseModel):
    metric: str
    direction: Literal["min", "max"]
    baseline: str | None = Field(description="the baseline run, or the value given")
    baseline_value: float | None
    rows: list[RunRow] = Field(description="best first; runs without the metric last")
    same: dict[str, Any] = Field(description="hyperparameters every run shares (up to 20)")
    note: str


def compare_runs(
    run_ids: list[str] | None = None,
    metric: str | None = None,
    baseline: str | None = None,
    project: Path | None = None,
    experiment: str | None = None,
) -> Comparison:
    """Compare `run_ids` (2-20), or the newest finished runs of `experiment` (up to 20), on
    `metric` (default: the first run's primary metric).

    `baseline` is one of the runs or a number (a published figure, an earlier result).

    Raises:
        InvalidInput: unless exactly one of `run_ids` and `experiment` is given.
        NotFound: for an experiment without a finished run.
    """
    project = project or paths.project_root()
    if (run_ids is None) == (experiment is None):
        raise InvalidInput(
            "compare_runs takes either run_ids (2-20 runs, e.g. ['001-trm-nav-20261201-101500', ...]) "
            "or experiment (e.g. '001': its newest finished runs), not both and not neither."
        )
    if experiment is not None:
        runs = experiment_runs(experiment, project)
    else:
        ids = list(dict.fromkeys(run_ids or []))
        if not 2 <= len(ids) <= MAX_RUNS:
            raise InvalidInput(f"compare_runs takes 2-{MAX_RUNS} distinct run ids; got {len(ids)}.")
        root = paths.runs_root(project)
        runs = [open_run(root, r) for r in ids]
    manifests = [r.read_manifest() for r in runs]
    metric = metric or manifests[0].primary_metric
    direction = next((m.primary_mode for m in manifests if m.primary_metric == metric), None) or (
        direction_of(metric) or "min"
    )
    configs = [m.config for m in manifests]
    keys = sorted({k for c in configs for k in c})
    all_differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    differing = all_differing[: _shown(all_differing, configs)]
    same = {k: _short(configs[0].get(k)) for k in keys if k not in all_differing}

    rows = []
    for run, manifest, config in zip(runs, manifests, configs, strict=True):
        with loaded(run.path) as found:
            curves = found.curves
            name = find_metric(curves, metric)
            stats = metric_stats(curves.series[name], direction) if name and name in curves.series else None
        best = stats.best if stats else None
        rows.append(
            RunRow(
                run_id=run.run_id,
                experiment=manifest.experiment,
                status=refresh(run).status,
                best=best.value if best else None,
                best_step=best.step if best else None,
                best_epoch=best.epoch if best else None,
                last=stats.last.value if stats and stats.last else None,
                points=stats.count if stats else 0,
                differs={k: _short(config.get(k)) for k in differing},
            )
        )
    base_value, base_name = _baseline(baseline, rows)
    for row in rows:
        if base_value is not None and row.best is not None:
            row.vs_baseline = round(row.best - base_value, 6)
    sign = 1 if direction == "min" else -1
    rows.sort(key=lambda r: (r.best is None, sign * r.best if r.best is not None else 0))
    leader = rows[0]
    note = (
        f"best {metric}: {leader.run_id} at {leader.best:.4g}" if leader.best is not None else f"no run logged {metric}"
    )
    if base_value is not None and leader.best is not None:
        note += f" vs {base_value:.4g} baseline ({base_name})"
    if len(all_differing) > len(differing):
        note += f"; {len(all_differing) - len(differing)} more hyperparameters differ: " + budget.clip(
            ", ".join(all_differing[len(differing) :]), 300
        )
    return Comparison(
        metric=metric,
        direction=direction,
        baseline=base_name,
        baseline_value=base_value,
        rows=rows,
        same=dict(list(same.items())[:MAX_SAME]),
        note=note,
    )


def experiment_runs(experiment: str, project: Path) -> list[RunDir]:
    """The newest MAX_RUNS finished runs of `experiment`, newest first.

    Raises:
        NotFound: if it has none (the message says how to get one).
    """
    found: list[RunDir] = []
    for run in ledger.runs_of(experiment, project):
        try:
            finished = refresh(run).status in TERMINAL
        except (OSError, InvalidInput):
            continue  # a damaged run folder is list_runs' to report, not a comparison's
        if finished:
            found.append(run)
            if len(found) == MAX_RUNS:
                break
    if not found:
        raise NotFound(
            f"experiment {experiment!r} has no finished run in {paths.runs_root(project)}; "
            "launch_run it and let it end, or pass run_ids."
        )
    return found


def _shown(differing: list[str], configs: list[dict[str, Any]]) -> int:
    """How many differing hyperparameters every row can show within DIFFERS_CHARS (at least one;
    a grid search's few short ones always fit)."""
    n, used = 0, 0
    for key in differing[:MAX_DIFFERING]:
        used += sum(len(json.dumps({key: _short(c.get(key))}, default=str)) for c in configs)
        if n and used > DIFFERS_CHARS:
            break
        n += 1
    return n


def _short(value: Any) -> Any:
    return budget.clip(value, 24) if isinstance(value, str) else value


def _baseline(baseline: str | None, rows: list[RunRow]) -> tuple[float | None, str | None]:
    if baseline is None:
        return None, None
    row = next((r for r in rows if r.run_id == baseline), None)
    if row is not None:
        return row.best, baseline
    try:
        value = float(baseline)
    except ValueError:
        value = math.nan
    if math.isfinite(value):
        return value, "given"
    raise InvalidInput(
        f"baseline {baseline!r} is neither one of the runs compared nor a finite number; "
        "pass a run id from run_ids or a value such as 20.47."
    )
