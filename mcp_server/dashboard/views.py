"""What the dashboard's pages show, as JSON: the same functions as the tools, never a whole file.

Curves come from the incremental readers (`curves.load`: a growing run costs only its new bytes)
and reach the browser as min/max envelopes of at most `POINTS` buckets a series (`plot.envelope`,
as `plot_run` draws them), so a run of a million points is a few thousand numbers. A page that
polls gets `unchanged` while a run's logs have not changed (their stat signature).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mcp_server import budget, diagnose, paths, runs
from mcp_server.curves import load as curves_load
from mcp_server.curves import plot as curves_plot
from mcp_server.curves.readers import signature
from mcp_server.curves.summary import resolve_metric, summarize_run_dir
from mcp_server.errors import TrainguardError
from mcp_server.rundir import TERMINAL, RunDir, newest_runs, open_run

MAX_RUNS = 200  # rows on the runs page (newest first)
POINTS = 1000  # envelope buckets per series: at most 2,000 points a curve reach the browser
MAX_SERIES = 24
MAX_EVENTS = 50
# Seed 004's panel for an RL run (one that logs a policy and a value loss): rewards (returns, food,
# poison) and lengths per mode, the policy and value losses, the entropy, the actions.
PPO_PANEL = ("return", "reward", "length", "food", "poison", "policy", "value", "entropy", "action")


def _num(value: Any) -> Any:
    """JSON has no NaN or infinity: they go as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def runs_view(project: Path, experiment: str | None, status: str | None, sweep: str | None) -> dict[str, Any]:
    """Every run (the newest `MAX_RUNS`), live: status, queue position, backend, experiment,
    headline, findings count, elapsed time; filtered by experiment, status and sweep."""
    root = paths.runs_root(project)
    found = newest_runs(root)
    rows = []
    for path in found[:MAX_RUNS]:
        run = RunDir(Path(path))
        try:
            info = runs.row(run)
            manifest = run.read_manifest()
            findings = [
                f.rule for f in summarize_run_dir(run.path, manifest).findings if f.severity in ("warn", "fail")
            ]
        except (TrainguardError, OSError, ValueError) as exc:
            rows.append({"run_id": run.run_id, "status": "damaged", "error": budget.clip(str(exc), 200)})
            continue
        row = info.model_dump(mode="json", exclude_none=True) | {"findings": len(findings)}
        if experiment and experiment not in info.experiment:
            continue
        if status and info.status != status:
            continue
        if sweep and info.sweep_id != sweep:
            continue
        rows.append(row)
    return {"runs": rows, "total": len(found), "shown": len(rows), "at": time.time()}


def run_view(project: Path, run_id: str) -> dict[str, Any]:
    """One run: its status, pre-flight result, watchdog events, findings with remedies and, once
    it ended other than well, the diagnosis."""
    run = open_run(paths.runs_root(project), run_id)
    status = runs.status(run_id, project)
    manifest = run.read_manifest()
    summary = summarize_run_dir(run.path, manifest)
    view = {
        "run": status.model_dump(mode="json", exclude_none=True),
        "title": manifest.title,
        "config": manifest.config,
        "overrides": manifest.overrides,
        "preflight": manifest.preflight,
        "events": run.read_state().events[-MAX_EVENTS:],
        "headline": summary.headline,
        "findings": [f.model_dump(mode="json", exclude_none=True) for f in summary.findings],
        "primary_metric": summary.primary_metric,
        "can_stop": status.status not in TERMINAL,
        "can_resume": status.status in ("stopped", "failed", "lost", "pruned") and bool(status.checkpoints),
    }
    if status.status in ("failed", "lost"):
        view["diagnosis"] = diagnose.diagnose(run, runs.refresh(run)).model_dump(mode="json", exclude_none=True)
    return view


def curves_view(project: Path, run_id: str, since: str | None = None) -> dict[str, Any]:
    """The run's curves as envelopes, grouped in panels (train and val of a metric together),
    each with the step its non-finite values start at and whether a log scale helps; `unchanged`
    when the logs have not changed since the `version` the page passes back."""
    run = open_run(paths.runs_root(project), run_id)
    version = hashlib.blake2s(repr(signature(run.path)).encode(), digest_size=8).hexdigest()  # the logs' stat
    if since is not None and since == version:
        return {"unchanged": True, "version": version}
    manifest = run.read_manifest()
    with curves_load.loaded(run.path) as found:
        curves = found.curves
        primary = resolve_metric(curves, manifest.primary_metric)
        names = list(curves.series)[:MAX_SERIES]
        panels: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            series = curves.series[name]
            if len(series) == 0:
                continue
            xs, ys = curves_plot.envelope(series, POINTS)
            values = series.values()
            bad = ~np.isfinite(values)
            panels.setdefault(curves_plot.panel_key(name), []).append(
                {
                    "name": name,
                    "count": int(len(series)),
                    "x": [round(float(x), 6) for x in xs],
                    "y": [_num(round(float(y), 8)) for y in ys],
                    "nonfinite_at": float(series.steps()[int(np.argmax(bad))]) if bad.any() else None,
                    "last": _num(float(values[-1])),
                }
            )
    rl = any("policy" in n for n in names) and any("value" in n for n in names)
    order = sorted(panels, key=lambda key: (primary is None or curves_plot.panel_key(primary) != key, key))
    out = []
    for key in order:
        finite = [y for s in panels[key] for y in s["y"] if y is not None]
        log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 100
        out.append({"panel": key, "log": log, "series": panels[key], "ppo": rl and any(p in key for p in PPO_PANEL)})
    return {
        "version": version,
        "primary": primary,
        "panels": out,
        "points": sum(s["count"] for p in out for s in p["series"]),
    }


HISTORY_S = 600.0  # the GPUs page shows the last ten minutes
MIN_SAMPLE_S = 1.0  # pages polling faster share one sample


class GpuHistory:
    """The GPUs over the last minutes, from the same sampler as `gpu_status` and `gpu_watch`:
    sampled when a page asks (at most once a second), so an idle dashboard samples nothing."""

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.samples: list[dict[str, Any]] = []

    def view(self) -> dict[str, Any]:
        now = time.time()
        if not self.samples or now - self.samples[-1]["t"] >= MIN_SAMPLE_S:
            report = self.sampler.sample()
            self.samples.append(
                {
                    "t": now,
                    "devices": [
                        {
                            "index": d.index,
                            "memory_used_gib": None if d.memory_used_bytes is None else d.memory_used_bytes / 2**30,
                            "utilization_percent": d.utilization_percent,
                            "temperature_c": d.temperature_c,
                            "power_w": d.power_w,
                        }
                        for d in report.devices
                    ],
                    "host_cpu_percent": report.host.cpu_percent,
                }
            )
            self.samples = [s for s in self.samples if now - s["t"] <= HISTORY_S]
            self.report = report
        report = self.report
        return {
            "backend": report.backend,
            "note": report.note,
            "devices": [
                {
                    "index": d.index,
                    "name": d.name,
                    "memory_total_gib": None if d.memory_total_bytes is None else d.memory_total_bytes / 2**30,
                    "power_limit_w": d.power_limit_w,
                    "processes": [
                        {
                            "pid": p.pid,
                            "run_id": p.run_id,
                            "memory_gib": None if p.used_memory_bytes is None else p.used_memory_bytes / 2**30,
                            "command": p.command or p.name,
                        }
                        for p in d.processes
                    ],
                }
                for d in report.devices
            ],
            "host": report.host.model_dump(mode="json"),
            "history": self.samples,
        }
