"""What the dashboard's pages show, as JSON, and what it keeps between polls so that a page
left open costs almost nothing.

Every answer carries a `version`; a page passes it back (`since`) and gets `{"unchanged": true}`
while nothing it shows changed. Whether something changed is a few stat calls: a run's
state.json and manifest.json, its checkpoints folder and its logs' signature (`readers.signature`).
What changed is recomputed from the same functions as the tools (`runs.status_of`, the curve
summaries, `diagnose`), at most once a `LIVE_REFRESH_S` however fast a run logs, and shared by
every page that shows it. Curves come from the incremental readers (`curves.load`: a growing run
costs only its new bytes) and reach the browser as min/max envelopes (`plot.envelope`, as
`plot_run` draws them): a run of a million points is a few thousand numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcp_server import budget, diagnose, paths, runs
from mcp_server.curves import load as curves_load
from mcp_server.curves import plot as curves_plot
from mcp_server.curves.readers import signature
from mcp_server.curves.store import Series
from mcp_server.curves.summary import CurveSummary, resolve_metric, serious_findings, summarize_run_dir
from mcp_server.errors import TrainguardError
from mcp_server.rundir import TERMINAL, Manifest, RunDir, newest_runs, open_run

MAX_RUNS = 200  # rows on the runs page: the newest that match its filters
ROW_REFRESH_S = 5.0  # a live run's row (headline, findings) is recomputed at most this often; on a state change at once
LIVE_REFRESH_S = 1.0  # a run page's curves are recomputed at most this often, however fast its run logs;
DETAILS_REFRESH_S = 10.0  # the rest (its status, and the findings: rules over whole curves) this often while
# it lives, and at once when its state, manifest or checkpoints change
KEPT_PAGES = 32  # run pages whose last answer is kept
POINTS = 1000  # envelope buckets per series (at most 2,000 points a curve reach the browser)...
SERIES_POINTS = 24_000  # ...fewer when a run logs many series, so that all of them stay about this many buckets
MAX_SERIES = 64
MAX_EVENTS = 50
# Seed 004's panel, for a run that logs a policy and a value loss per mode ("<mode>/policy_loss"):
# per mode, its episode rewards, episode length, the two losses, the entropy and the actions taken.
PPO_CHARTS = (
    ("episode reward", ("return", "reward", "food", "poison")),
    ("episode length", ("length",)),
    ("policy and value loss", ("policy_loss", "value_loss")),
    ("entropy", ("entropy",)),
    ("action distribution", ("action_",)),  # a prefix: action_up, action_down...
)


def _num(value: Any) -> Any:
    """JSON has no NaN or infinity: they go as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten: its size, mtime and inode (None: not there)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _version(*parts: Any) -> str:
    return hashlib.blake2s(repr(parts).encode(), digest_size=8).hexdigest()


@dataclass
class _Kept:
    """A computed answer and what it was computed from."""

    key: tuple  # the stamps it was computed from
    at: float  # when (time.monotonic)
    live: bool  # the run had not ended
    data: dict[str, Any]
    version: str
    details_at: float = 0.0  # a run page's: when its details were computed (`at`: its curves)
    manifest: Manifest | None = None


class Views:
    """One dashboard's views of one project, with what it keeps between polls (thread-safe: the
    worst a race does is compute an answer twice)."""

    def __init__(self, project: Path, sampler: Any = None):
        self.project = project
        self.root = paths.runs_root(project)
        self._rows: dict[str, _Kept] = {}
        self._pages: OrderedDict[str, _Kept] = OrderedDict()
        self._summaries: dict[Path, tuple[float, CurveSummary]] = {}  # live runs': when computed, what
        self._lock = threading.Lock()
        self.gpu_history = GpuHistory(sampler) if sampler is not None else None

    # ------------------------------------------------------------------ the runs page

    def runs(
        self,
        experiment: str | None = None,
        status: str | None = None,
        sweep: str | None = None,
        since: str | None = None,
    ) -> dict[str, Any]:
        """Every run, live: status (queued with its position), backend, experiment, sweep,
        headline, findings count, start and end (the page counts the elapsed time itself); the
        newest `MAX_RUNS` of those that match the filters (experiment: part of its name)."""
        found = newest_runs(self.root)
        now = time.monotonic()
        shown, matched = [], 0
        for path in found:
            kept = self._row(path, now)
            row = kept.data
            if experiment and experiment not in row.get("experiment", ""):
                continue
            if status and row["status"] != status:
                continue
            if sweep and row.get("sweep_id") != sweep:
                continue
            matched += 1
            if len(shown) < MAX_RUNS:
                shown.append(kept)
        with self._lock:
            for path in set(self._rows) - set(found):  # folders deleted meanwhile
                del self._rows[path]
                self._summaries.pop(Path(path), None)
        version = _version(experiment, status, sweep, len(found), [k.version for k in shown])
        if since == version:
            return {"unchanged": True, "version": version, "at": time.time()}
        return {
            "runs": [k.data for k in shown],
            "total": len(found),
            "matched": matched,
            "shown": len(shown),
            "version": version,
            "at": time.time(),
        }

    def _row(self, path: str, now: float) -> _Kept:
        run = RunDir(Path(path))
        key = (_stamp(run.state_file), _stamp(run.manifest))
        kept = self._rows.get(path)
        if kept is not None and kept.key == key and not (kept.live and now - kept.at >= ROW_REFRESH_S):
            return kept
        try:
            manifest, state = run.read_manifest(), runs.refresh(run)
            live = state.status not in TERMINAL
            summary = self._summary(run, manifest, live, now) if live else None  # an ended run's: as recorded
            fields = runs.info_fields(run, manifest, state, summary)
            row = runs.RunInfo(**fields).model_dump(mode="json", exclude_none=True)
            row.pop("elapsed_s", None)
            row.update(started_at=state.started_at, finished_at=state.finished_at)
        except (TrainguardError, OSError, ValueError) as exc:
            row, live = {"run_id": run.run_id, "status": "damaged", "error": budget.clip(str(exc), 300)}, False
        kept = _Kept(key, now, live, row, _version(row))
        with self._lock:
            self._rows[path] = kept
        return kept

    # ------------------------------------------------------------------ a run's page

    def run(self, run_id: str, since: str | None = None) -> dict[str, Any]:
        """One run, all its page shows: its status, pre-flight result, watchdog events, findings
        with remedies, the diagnosis once it failed, and its curves (`curves_of`)."""
        run = open_run(self.root, run_id)
        key = (_stamp(run.state_file), _stamp(run.manifest), _stamp(run.checkpoints), signature(run.path))
        now = time.monotonic()
        kept = self._pages.get(run_id)
        if kept is None or (kept.live and now - kept.details_at >= DETAILS_REFRESH_S) or kept.key[:3] != key[:3]:
            kept = self._page(run, key, now)
        elif kept.key != key and now - kept.at >= LIVE_REFRESH_S:
            kept = self._new_points(run, key, now, kept)
        if since == kept.version:
            return {"unchanged": True, "version": kept.version, "at": time.time()}
        return kept.data | {"at": time.time()}

    def _page(self, run: RunDir, key: tuple, now: float) -> _Kept:
        """The whole page, from the same functions as the tools."""
        manifest, state = run.read_manifest(), runs.refresh(run)
        live = state.status not in TERMINAL
        summary = self._summary(run, manifest, live, now)
        status = runs.status_of(run, manifest, state, summary)
        data: dict[str, Any] = {
            "run": status.model_dump(mode="json", exclude_none=True)
            | {"started_at": state.started_at, "finished_at": state.finished_at},
            "title": manifest.title,
            "overrides": manifest.overrides,
            "preflight": manifest.preflight,
            "events": state.events[-MAX_EVENTS:],
            "headline": summary.headline,
            "findings": [f.model_dump(mode="json", exclude_none=True) for f in summary.findings],
            "serious": len(serious_findings(summary.findings)),
            "primary_metric": summary.primary_metric,
            "details_at": time.time(),  # when the headline and findings were computed
            "can_stop": live,
            "can_resume": state.status in ("stopped", "failed", "lost", "pruned") and bool(status.checkpoints),
            "curves": curves_of(run.path, manifest.primary_metric),
        }
        if state.status in ("failed", "lost"):
            data["diagnosis"] = diagnose.diagnose(run, state).model_dump(mode="json", exclude_none=True)
        data["version"] = _version(key, time.time())
        return self._keep(run.run_id, _Kept(key, now, live, data, data["version"], now, manifest))

    def _summary(self, run: RunDir, manifest: Manifest, live: bool, now: float) -> CurveSummary:
        """A run's curve summary (its headline and findings: rules over whole curves), shared by
        its row and its page: while it lives, computed again at most every `DETAILS_REFRESH_S`."""
        with self._lock:
            if not live:  # ended: its final summary, at once
                self._summaries.pop(run.path, None)
            kept = self._summaries.get(run.path)
        if kept is not None and now - kept[0] < DETAILS_REFRESH_S:
            return kept[1]
        summary = summarize_run_dir(run.path, manifest, copy=False)
        if live:
            with self._lock:
                self._summaries[run.path] = (now, summary)
        return summary

    def _new_points(self, run: RunDir, key: tuple, now: float, before: _Kept) -> _Kept:
        """Only the run's logs changed: its curves again (only what was appended is read), the
        rest as it was (computed again every `DETAILS_REFRESH_S`)."""
        primary = before.manifest.primary_metric if before.manifest is not None else None
        data = before.data | {"curves": curves_of(run.path, primary), "version": _version(key, time.time())}
        kept = _Kept(key, now, before.live, data, data["version"], before.details_at, before.manifest)
        return self._keep(run.run_id, kept)

    def _keep(self, run_id: str, kept: _Kept) -> _Kept:
        with self._lock:
            self._pages[run_id] = kept
            self._pages.move_to_end(run_id)
            while len(self._pages) > KEPT_PAGES:
                self._pages.popitem(last=False)
        return kept

    # ------------------------------------------------------------------ compare, GPUs

    def curve(self, run_id: str, metric: str | None) -> dict[str, Any]:
        """One metric of one run (`metric`'s spelling in its logs, else its primary), as an
        envelope: what the compare page overlays."""
        run = open_run(self.root, run_id)
        manifest = run.read_manifest()
        with curves_load.loaded(run.path) as found:
            name = resolve_metric(found.curves, metric or manifest.primary_metric)
            if name is None or name not in found.curves.series:
                return {"run_id": run_id, "name": metric, "x": [], "y": [], "count": 0, "nonfinite_at": None}
            return {"run_id": run_id, **_series(name, found.curves.series[name], POINTS)}

    def gpus(self, since: float | None = None) -> dict[str, Any]:
        if self.gpu_history is None:
            raise TrainguardError("this dashboard has no GPU sampler")
        return self.gpu_history.view(since)


def curves_of(run_path: Path, primary_metric: str | None) -> dict[str, Any]:
    """A run's curves, grouped in panels (train and val of a metric on one), each series an
    envelope with the step its non-finite values start at, and whether a log scale helps; for an
    RL run, seed 004's panel per mode (`ppo`)."""
    with curves_load.loaded(run_path) as found:
        curves = found.curves
        primary = resolve_metric(curves, primary_metric)
        names = [n for n, s in curves.series.items() if len(s)]
        shown = names[:MAX_SERIES]
        points = max(100, min(POINTS, SERIES_POINTS // max(len(shown), 1)))
        series = {name: _series(name, curves.series[name], points) for name in shown}
        epochs = [e[-1] for e in (curves.series[n].epochs() for n in names) if len(e) and np.isfinite(e[-1])]
    ppo, used = _ppo(series)
    panels: dict[str, list[dict[str, Any]]] = {}
    for name, one in series.items():
        if name not in used:
            panels.setdefault(curves_plot.panel_key(name), []).append(one)
    primary_key = curves_plot.panel_key(primary) if primary else None
    out = [
        {"panel": key, "log": _log_scale(panels[key]), "series": panels[key]}
        for key in sorted(panels, key=lambda key: (key != primary_key, key))
    ]
    return {
        "primary": primary,
        "panels": out,
        "ppo": ppo,
        "points": sum(s["count"] for s in series.values()),
        "epoch": int(max(epochs)) if epochs else None,  # the newest, as the curves have it (the details may lag)
        "series_total": len(names),
        "series_shown": len(shown),
    }


def _series(name: str, series: Series, points: int) -> dict[str, Any]:
    xs, ys = curves_plot.envelope(series, points)  # finite values only
    values = series.values()
    bad = ~np.isfinite(values)
    return {
        "name": name,
        "count": int(len(series)),
        "x": np.round(xs.astype(np.float64), 6).tolist(),
        "y": np.round(ys.astype(np.float64), 8).tolist(),
        "nonfinite_at": float(series.steps()[int(np.argmax(bad))]) if bad.any() else None,
        "last": _num(float(values[-1])),
    }


def _log_scale(series: list[dict[str, Any]]) -> bool:
    """A log scale helps when every value is positive and they span more than two decades."""
    lows = [min(s["y"]) for s in series if s["y"]]
    highs = [max(s["y"]) for s in series if s["y"]]
    return bool(lows) and min(lows) > 0 and max(highs) / min(lows) > 100


def _ppo(series: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], set[str]]:
    """Seed 004's panel: for each mode that logs "<mode>/policy_loss" and "<mode>/value_loss",
    its charts (`PPO_CHARTS`); and the series they use (not drawn again among the panels)."""
    modes = sorted(
        n.rsplit("/", 1)[0]
        for n in series
        if n.endswith("/policy_loss") and n[: -len("policy_loss")] + "value_loss" in series
    )
    out, used = [], set()
    for mode in modes:
        charts = []
        for title, wanted in PPO_CHARTS:
            members = [
                one
                for name, one in series.items()
                if name.startswith(mode + "/") and _is(name[len(mode) + 1 :], wanted)
            ]
            used.update(one["name"] for one in members)
            charts.append({"title": title, "series": members})
        out.append({"mode": mode, "charts": charts})
    return out, used


def _is(metric: str, wanted: tuple[str, ...]) -> bool:
    return any(metric.startswith(w) if w.endswith("_") else metric == w for w in wanted)


HISTORY_S = 600.0  # the GPUs page shows the last ten minutes
MIN_SAMPLE_S = 1.0  # pages polling faster share one sample


class GpuHistory:
    """The GPUs over the last minutes, from the same sampler as `gpu_status` and `gpu_watch`:
    sampled when a page asks (at most once a second), so an idle dashboard samples nothing."""

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def view(self, since: float | None = None) -> dict[str, Any]:
        """The GPUs now, and their samples (all of the last minutes, or those after `since`: a
        page keeps what it has)."""
        with self._lock:
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
            history = [s for s in self.samples if since is None or s["t"] > since]
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
            "history": history,
        }
