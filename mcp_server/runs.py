"""Launching, watching and stopping runs. State lives in the run folder, not in memory.

`launch` writes the manifest and starts a supervisor (`mcp_server.supervisor`) that owns
the trainer process; everything else reads the run folder, so the CLI, the MCP server and a
restarted server all see the same runs.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server import __version__, diagnose, paths, procs, registry, scratchpad, slots, textlog
from mcp_server.curves import load as curves_load
from mcp_server.curves import plot as curves_plot
from mcp_server.curves.summary import CurveSummary, find_metric, resolve_metric, summarize, summarize_run_dir
from mcp_server.errors import Conflict, InvalidInput, NotFound, TrainguardError
from mcp_server.preflight import Check, PreflightReport, probe_torch, run_preflight
from mcp_server.rundir import TERMINAL, RunDir, RunState, all_runs, create_run_dir, open_run, write_json_atomic
from mcp_server.specs import Scalar, TrainerSpec, build_argv

START_TIMEOUT_S = 20.0
FINALIZE_TIMEOUT_S = 15.0


class LaunchResult(BaseModel):
    """What `launch_run` did (or, with dry_run, would do)."""

    run_id: str | None
    status: str
    dry_run: bool
    run_dir: str
    argv: list[str]
    env: dict[str, str]
    pid: int | None
    config: dict[str, Scalar | None]
    preflight_verdict: str
    preflight_notes: list[Check]
    acknowledged: list[str]
    next_step: str


class RunInfo(BaseModel):
    """A run as `list_runs` and `run_status` show it."""

    run_id: str
    experiment: str
    status: str
    created_at: str
    elapsed_s: float | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    failure: str | None
    headline: str
    queue_position: int | None = None  # 1 = next to start, when queued


class RunStatus(RunInfo):
    """`run_status`: the run, its latest metric values and, on failure, the end of stderr."""

    epoch: int | None
    epochs: int | None
    latest: dict[str, float | None]
    checkpoints: list[str]
    stderr_tail: str | None
    run_dir: str
    events: list[dict[str, Any]] = []  # watchdog firings, the last 20


class StopResult(BaseModel):
    run_id: str
    status: str
    how: str
    processes_left: int
    message: str


def _git_commit(project: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(project), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def launch(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    *,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    project: Path | None = None,
) -> LaunchResult:
    """Re-run pre-flight, then start the experiment's trainer under a supervisor.

    Raises:
        Conflict: if pre-flight fails (the message lists the failed checks and their fixes), or a
            danger rule fires that `acknowledge` does not name.
        NotFound / InvalidInput: for an unknown experiment, a bad override or an unknown rule id.
    """
    project = project or paths.project_root()
    scratchpad.agent_dir(project, agent)  # validate before anything is created
    note = scratchpad.clean_text(note, limit=1000) if note else ""
    report, exp, spec = run_preflight(experiment, overrides, project)
    if report.verdict == "fail":
        fixes = [f"{c.name}: {c.detail} Fix: {c.fix}" for c in report.checks if c.verdict == "fail"]
        raise Conflict(f"pre-flight failed for {exp.id}, nothing launched. " + " | ".join(fixes))

    root = paths.runs_root(project)
    stem = f"{exp.id}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run = RunDir(root / stem)  # the folder is only created once the launch is sure to go ahead
    argv = build_argv(spec, report.config, python=report.python, project=project, output_dir=run.checkpoints)
    env = procs.child_env(spec.env) | {
        "TRAINGUARD_RUN_ID": run.run_id,
        "TRAINGUARD_RUN_DIR": str(run.path),
        "TRAINGUARD_METRICS": str(run.metrics),
    }
    notes = [c for c in report.checks if c.verdict != "pass"]
    if dry_run:
        return LaunchResult(
            run_id=None, status="dry_run", dry_run=True, run_dir=str(run.path), argv=argv, env=env, pid=None,
            config=report.config, preflight_verdict=report.verdict, preflight_notes=notes, acknowledged=[],
            next_step="Nothing was started. Call launch_run without dry_run to start it.",
        )

    acknowledged = _check_acknowledged(spec, report, acknowledge or [])
    run = create_run_dir(root, stem)
    run.checkpoints.mkdir()
    torch_info = probe_torch(report.python)
    manifest = {
        "run_id": run.run_id,
        "created_at": dt.datetime.now().isoformat(timespec="seconds"),
        "experiment": exp.id,
        "experiment_dir": str(exp.dir),
        "source": exp.source,
        "title": exp.title,
        "hypothesis": exp.hypothesis,
        "trainer": spec.name,
        "primary_metric": spec.primary_metric,
        "primary_mode": spec.primary_mode,
        "config": report.config,
        "overrides": report.overrides,
        "argv": argv,
        "env": env,
        "cwd": str(project),
        "project_dir": str(project),
        "agent": agent,
        "note": note,
        "acknowledged": acknowledged,
        "watchdog": exp.watchdog.model_dump(),
        "resource": "gpu" if torch_info.get("devices") and report.config.get("device") not in ("cpu", "mps") else "cpu",
        "git_commit": _git_commit(project),
        "versions": {
            "trainguard": __version__,
            "python": torch_info.get("python"),
            "torch": torch_info.get("torch"),
            "cuda": torch_info.get("cuda"),
            "hip": torch_info.get("hip"),
        },
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "user": getpass.getuser()},
        "gpus": torch_info.get("devices", []),
        "preflight": {"verdict": report.verdict, "warnings": [c.detail for c in report.checks if c.verdict == "warn"]},
    }
    write_json_atomic(run.manifest, manifest)
    run.write_state(RunState(status="starting", updated_at=time.time()))
    _start_supervisor(run)
    state = _wait_started(run)

    parts = [f"launched {run.run_id} ({exp.title})"]
    if report.overrides:
        parts.append("overrides " + ", ".join(f"{k}={v}" for k, v in report.overrides.items()))
    if acknowledged:
        parts.append(f"acknowledged danger rules: {', '.join(acknowledged)}")
    if note:
        parts.append(f"note: {note}")
    scratchpad.append(project, agent, "; ".join(parts), kind="launch")
    return LaunchResult(
        run_id=run.run_id, status=state.status, dry_run=False, run_dir=str(run.path), argv=argv, env=env,
        pid=state.pid, config=report.config, preflight_verdict=report.verdict, preflight_notes=notes,
        acknowledged=acknowledged,
        next_step=(f"Queued: it starts when a {state.resource or 'device'} slot frees; stop_run cancels it. "
                   if state.status == "queued" else "")
        + f"wait_run('{run.run_id}') waits for its end or a watchdog event; then summarize_run.",
    )


def _check_acknowledged(spec: TrainerSpec, report: PreflightReport, acknowledge: list[str]) -> list[str]:
    """The fired danger rules, each of which `acknowledge` must name."""
    known = {rule.id for rule in spec.danger}
    unknown = sorted(set(acknowledge) - known)
    if unknown:
        raise InvalidInput(
            f"acknowledge names unknown danger rules {unknown}; {spec.name}'s rules are {sorted(known) or 'none'}."
        )
    missing = [rule_id for rule_id in report.danger_fired if rule_id not in acknowledge]
    if missing:
        details = [f"{c.name}: {c.detail}" for c in report.checks if c.name.removeprefix("danger:") in missing]
        raise Conflict(
            "danger rules fired, nothing launched: " + " | ".join(details)
            + f". Change the settings, or tell the user and pass acknowledge={missing}."
        )
    return list(report.danger_fired)


def _start_supervisor(run: RunDir) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PLUGIN_ROOT), env.get("PYTHONPATH")]))
    with run.supervisor_log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_server.supervisor", str(run.path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(paths.PLUGIN_ROOT),
            start_new_session=True, close_fds=True,
        )
    # Reap it when it exits so no zombie lingers while this server lives.
    threading.Thread(target=proc.wait, name=f"reap-{run.run_id}", daemon=True).start()


def _wait_started(run: RunDir) -> RunState:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = run.read_state()
        if state.status != "starting":
            return state
        time.sleep(0.05)
    state = refresh(run)
    if state.status == "starting":
        raise TrainguardError(
            f"run {run.run_id} did not start within {START_TIMEOUT_S:.0f} s; see {run.supervisor_log}."
        )
    return state


def refresh(run: RunDir) -> RunState:
    """The run's state, corrected if its supervisor died without recording an outcome."""
    state = run.read_state()
    if state.status in TERMINAL:
        return state
    if procs.is_alive(state.supervisor_pid, state.supervisor_started):
        return state
    if state.status == "starting" and state.supervisor_pid is None and time.time() - state.updated_at < START_TIMEOUT_S:
        return state  # the supervisor is still coming up
    state = run.read_state()  # it may have finished between the two reads
    if state.status in TERMINAL or procs.is_alive(state.pid, state.pid_started):
        return state
    state.status = "lost"
    state.failure = "the supervisor ended without recording how the trainer ended"
    state.finished_at = time.time()
    run.write_state(state)
    return state


def _info_fields(run: RunDir, manifest: dict[str, Any], state: RunState) -> dict[str, Any]:
    end = state.finished_at or time.time()
    summary = summarize_run_dir(run.path, manifest)
    return {
        "run_id": run.run_id,
        "experiment": manifest["experiment"],
        "status": state.status,
        "created_at": manifest["created_at"],
        "elapsed_s": round(end - state.started_at, 1) if state.started_at else None,
        "pid": state.pid,
        "exit_code": state.exit_code,
        "signal": state.signal,
        "failure": state.failure,
        "headline": summary.headline,
        "queue_position": (len(slots.queued_before(run.path.parent, run.run_id, state.resource or "cpu",
                                                    state.queued_at or time.time())) + 1
                           if state.status == "queued" else None),
    }, summary


def list_runs(project: Path | None = None, limit: int = 50) -> list[RunInfo]:
    """The most recent runs, newest first."""
    runs = all_runs(paths.runs_root(project or paths.project_root()))
    runs.sort(key=lambda r: r.manifest.stat().st_mtime, reverse=True)
    out = []
    for run in runs[:limit]:
        fields, _ = _info_fields(run, run.read_manifest(), refresh(run))
        out.append(RunInfo(**fields))
    return out


def status(run_id: str, project: Path | None = None) -> RunStatus:
    """Status of one run: state, latest metric values, checkpoints; stderr's end if it failed."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    manifest, state = run.read_manifest(), refresh(run)
    fields, summary = _info_fields(run, manifest, state)
    shown = ([summary.primary] if summary.primary else []) + summary.metrics
    latest = {m.name: m.last.value for m in shown if m.last is not None}
    epochs = [int(m.last.epoch) for m in shown if m.last is not None and m.last.epoch is not None]
    ckpts = _list_outputs(run.checkpoints)
    return RunStatus(
        **fields,
        epoch=max(epochs) if epochs else None,
        epochs=manifest["config"].get("epochs"),
        latest=latest,
        checkpoints=ckpts,
        stderr_tail=textlog.tail(run.stderr) if state.status in ("failed", "lost") else None,
        run_dir=str(run.path),
        events=state.events[-20:],
    )


MAX_LISTED_FILES = 40


def _list_outputs(folder: Path) -> list[str]:
    """Files the trainer wrote (relative paths, models/ppo.pth too), temp files left out, bounded."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(str(rel))
            if len(found) == MAX_LISTED_FILES:
                found.append("...")
                break
    return found


def summary(run_id: str, project: Path | None = None, primary_metric: str | None = None
            ) -> tuple[RunInfo, CurveSummary]:
    """The run and its curves' summary (around `primary_metric` if given, else the spec's)."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    manifest, state = run.read_manifest(), refresh(run)
    fields, summ = _info_fields(run, manifest, state)
    if primary_metric and primary_metric != manifest["primary_metric"]:
        with curves_load.loaded(run.path) as found:
            summ = summarize(found, primary_metric)
    return RunInfo(**fields), summ


def plot(run_id: str, metrics: list[str] | None = None, project: Path | None = None) -> tuple[Path, list[str]]:
    """Draw the run's curves to `<run dir>/plot.png`; returns the file and the metrics drawn."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    manifest = run.read_manifest()
    with curves_load.loaded(run.path) as found:
        curves = found.curves
        if not curves.series:
            raise InvalidInput(f"run {run_id} has logged no metrics yet; wait_run, then plot.")
        if metrics:
            names = [find_metric(curves, m) or m for m in metrics]
            unknown = [m for m, n in zip(metrics, names, strict=True) if n not in curves.series]
            if unknown:
                raise InvalidInput(f"run {run_id} has no metric {', '.join(map(repr, unknown))}; it has: "
                                   + ", ".join(list(curves.series)[:30]))
        else:
            names = curves_plot.default_metrics(curves, resolve_metric(curves, manifest["primary_metric"]))
        out = run.path / "plot.png"
        drawn = curves_plot.plot_curves(curves, names, f"{run_id} ({manifest['title'][:60]})", out)
    return out, drawn


def stop(run_id: str, grace_s: float = 30.0, project: Path | None = None) -> StopResult:
    """Ask the trainer to stop (SIGTERM: it checkpoints), then SIGKILL its whole group after `grace_s`."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    state = refresh(run)
    if state.status in TERMINAL:
        return StopResult(
            run_id=run_id, status=state.status, how="none", processes_left=0,
            message=f"run already ended ({state.status}); nothing to stop.",
        )
    run.stop_marker.write_text(json.dumps({"requested_at": time.time()}), encoding="utf-8")
    deadline = time.monotonic() + START_TIMEOUT_S
    while state.pgid is None and state.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        state = refresh(run)
    how = "none"
    if state.pgid is not None and state.status not in TERMINAL:
        if procs.is_alive(state.pid, state.pid_started) or procs.group_members(state.pgid):
            how = procs.stop_group(state.pgid, grace_s)
    deadline = time.monotonic() + FINALIZE_TIMEOUT_S
    while state.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        state = refresh(run)
    if how == "none" and state.status == "stopped" and state.pid is None:
        how = "cancelled while queued"
    left = len(procs.group_members(state.pgid)) if state.pgid else 0
    return StopResult(
        run_id=run_id, status=state.status, how=how, processes_left=left,
        message=f"run {state.status}; " + ("no process of it is left." if not left else f"{left} processes remain!"),
    )


def diagnose_run(run_id: str, project: Path | None = None) -> diagnose.Diagnosis:
    """How the run ended (or how it is doing), classified, with evidence and remedies."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    return diagnose.diagnose(run, refresh(run))


LOG_STREAMS = ("stderr", "stdout", "metrics", "supervisor")


def tail_log(run_id: str, stream: str = "stderr", lines: int = 50, pattern: str | None = None,
             project: Path | None = None) -> textlog.LogTail:
    """The last `lines` lines of one of the run's logs (matching `pattern`), bounded and cleaned.

    Raises:
        InvalidInput: for an unknown stream, a bad line count or pattern.
    """
    if stream not in LOG_STREAMS:
        raise InvalidInput(f"stream {stream!r} is not one of {list(LOG_STREAMS)}.")
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    path = {"stderr": run.stderr, "stdout": run.stdout, "metrics": run.metrics,
            "supervisor": run.supervisor_log}[stream]
    picked, matched, truncated = textlog.tail_lines(path, lines, pattern)
    size = path.stat().st_size if path.is_file() else 0
    return textlog.LogTail(run_id=run_id, stream=stream, lines=picked, matched=matched, truncated=truncated,
                           file_bytes=size)


def resume_run(
    run_id: str,
    overrides: dict[str, Any] | None = None,
    *,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    project: Path | None = None,
) -> LaunchResult:
    """Launch a new run of the same experiment and overrides that continues from `run_id`'s
    last checkpoint (the trainer spec's `resume_checkpoint`), through the same pre-flight.

    The danger rules the original run acknowledged stay acknowledged; `overrides` may change
    anything else (e.g. more epochs).

    Raises:
        Conflict: the run is still going. NotFound: it left no checkpoint. InvalidInput: its
            trainer cannot resume, or its checkpoint is outside the project.
    """
    project = project or paths.project_root()
    run = open_run(paths.runs_root(project), run_id)
    state = refresh(run)
    if state.status not in TERMINAL:
        raise Conflict(f"run {run_id} is {state.status}; stop_run it first, then resume it.")
    manifest = run.read_manifest()
    spec = registry.load_trainer(manifest["trainer"], project)
    if not spec.resume_checkpoint:
        raise InvalidInput(f"trainer {spec.name!r} names no resume_checkpoint in its spec, so its runs cannot be "
                           "resumed; launch_run the experiment again instead.")
    found = sorted((p for p in run.checkpoints.glob(spec.resume_checkpoint) if p.is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise NotFound(f"run {run_id} left no checkpoint matching {spec.resume_checkpoint!r} in {run.checkpoints} "
                       "(it ended before its first one); launch_run the experiment again instead.")
    checkpoint = found[-1]
    if not checkpoint.resolve().is_relative_to(project.resolve()):
        raise InvalidInput(f"the checkpoint {checkpoint} is outside the project {project} (TRAINGUARD_RUNS_DIR?); "
                           "copy it into the project and pass it as the resume override of launch_run.")
    merged = {**manifest.get("overrides", {}), **(overrides or {}),
              "resume": str(checkpoint.resolve().relative_to(project.resolve()))}
    acks = sorted(set(manifest.get("acknowledged", [])) | set(acknowledge or []))
    why = f"resume of {run_id} from {checkpoint.name}" + (f"; {note}" if note else "")
    return launch(manifest["experiment"], merged, note=why, agent=agent, acknowledge=acks, dry_run=dry_run,
                  project=project)
