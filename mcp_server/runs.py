"""Launching, watching and stopping runs. State lives in the run folder, not in memory.

`launch` writes the manifest and starts a supervisor (`mcp_server.supervisor`) that owns
the trainer process; everything else reads the run folder, so the CLI, the MCP server and a
restarted server all see the same runs.
"""

from __future__ import annotations

import datetime as dt
import errno
import getpass
import logging
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, get_args

import anyio
import anyio.to_thread
from pydantic import BaseModel

from mcp_server import (
    __version__,
    backends,
    budget,
    diagnose,
    memory,
    paths,
    procs,
    registry,
    safefiles,
    scratchpad,
    slots,
    textlog,
)
from mcp_server.curves import load as curves_load
from mcp_server.curves import plot as curves_plot
from mcp_server.curves.summary import (
    CurveSummary,
    find_metric,
    resolve_metric,
    serious_findings,
    summarize,
    summarize_run_dir,
)
from mcp_server.errors import Conflict, InvalidInput, NotFound, TrainguardError
from mcp_server.preflight import Check, PreflightReport, probe_torch, run_preflight
from mcp_server.rundir import (
    TERMINAL,
    Manifest,
    RunDir,
    RunState,
    Status,
    create_run_dir,
    newest_runs,
    open_run,
    write_json_atomic,
)
from mcp_server.safefiles import disk_full
from mcp_server.specs import Scalar, TrainerSpec, build_argv

log = logging.getLogger("trainguard.runs")

FINALIZE_TIMEOUT_S = 15.0


class LaunchResult(BaseModel):
    """What `launch_run` did (or, with dry_run, would do)."""

    run_id: str | None
    status: Status | Literal["dry_run"]
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
    status: Status | Literal["damaged"]  # damaged: the folder cannot be read (see `error`)
    created_at: str
    elapsed_s: float | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    failure: str | None
    headline: str
    queue_position: int | None = None  # 1 = next to start, when queued
    error: str | None = None  # a damaged run folder: what is wrong and what to do
    backend: str = "local"
    nproc: int = 1  # processes (torchrun's ranks)
    job_id: str | None = None  # Slurm's
    slurm_state: str | None = None
    queue_reason: str | None = None  # why Slurm keeps it pending
    requeues: int = 0
    stopped_because: str | None = None  # a stop's reason: a sweep's pruner and its evidence, a trial budget
    sweep_id: str | None = None  # the sweep this run is a trial of
    trial: int | None = None
    findings: int | None = None  # its curves' warn and fail findings (summarize_run lists them)


class RunStatus(RunInfo):
    """`run_status`: the run, its latest metric values and, on failure, the end of stderr."""

    epoch: int | None
    epochs: int | None
    latest: dict[str, float | None]
    latest_omitted: int = 0  # metrics logged but not shown in `latest` (summarize_run has them)
    checkpoints: list[str]
    stderr_tail: str | None
    run_dir: str
    events: list[dict[str, Any]] = []  # watchdog firings, the last few
    events_total: int = 0


class StopResult(BaseModel):
    """`stop_run`: how the run was stopped, and whether anything of it is left."""

    run_id: str
    status: Status
    how: str
    processes_left: int
    message: str


def _git_commit(project: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(project), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> dt.datetime:
    return dt.datetime.now()


def _command(
    spec: TrainerSpec, report: PreflightReport, project: Path, run: RunDir
) -> tuple[list[str], dict[str, str]]:
    """The trainer's argv (as its backend starts it) and environment: everything that names a
    folder names `run`'s own."""
    argv = build_argv(spec, report.config, python=report.python, project=project, output_dir=run.checkpoints)
    argv = backends.get(report.backend).trainer_argv(argv, report.resources, run)
    env = procs.child_env(spec.env) | {
        procs.RUN_ID_VAR: run.run_id,
        "TRAINGUARD_RUN_DIR": str(run.path),
        "TRAINGUARD_METRICS": str(run.metrics),
    }
    return argv, env


def launch(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    *,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    project: Path | None = None,
    backend: str | None = None,
    resources: dict[str, Any] | None = None,
    sweep: tuple[str, int] | None = None,
) -> LaunchResult:
    """Re-run pre-flight, then start the experiment's trainer under a supervisor, on the
    experiment's backend (its `[run]` table) or `backend` with `resources`. `sweep` is
    (sweep id, trial number) when a sweep's driver launches it as a trial.

    All or nothing: the run folder is made first, everything the run is told (argv, env) names
    that folder, and a launch that fails part-way removes what it made.

    Raises:
        Conflict: if pre-flight fails (the message lists the failed checks and their fixes), a
            danger rule fires that `acknowledge` does not name, or the disk is full.
        NotFound / InvalidInput: for an unknown experiment, a bad override or an unknown rule id.
    """
    project = project or paths.project_root()
    scratchpad.agent_dir(project, agent)  # validate before anything is created
    note = scratchpad.clean_text(note, limit=1000) if note else ""
    report, exp, spec = run_preflight(experiment, overrides, project, backend, resources)
    if report.verdict == "fail":
        fixes = [f"{c.name}: {c.detail} Fix: {c.fix}" for c in report.checks if c.verdict == "fail"]
        raise Conflict(f"pre-flight failed for {exp.id}, nothing launched. " + " | ".join(fixes))

    root = paths.runs_root(project)
    stem = f"{exp.id}-{_now():%Y%m%d-%H%M%S}"
    notes = [c for c in report.checks if c.verdict != "pass"]
    if dry_run:
        # Nothing is made: the folder shown is the name a launch now would start from.
        argv, env = _command(spec, report, project, RunDir(root / stem))
        return LaunchResult(
            run_id=None,
            status="dry_run",
            dry_run=True,
            run_dir=str(root / stem),
            argv=argv,
            env=env,
            pid=None,
            config=report.config,
            preflight_verdict=report.verdict,
            preflight_notes=notes,
            acknowledged=[],
            next_step="Nothing was started. Call launch_run without dry_run to start it.",
        )

    acknowledged = _check_acknowledged(spec, report, acknowledge or [])
    torch_info = probe_torch(report.python, memory.run_devices_env(report.config, spec.env))  # preflight's answer
    try:
        run = create_run_dir(root, stem)
    except OSError as exc:
        raise _launch_error(root, exc) from None
    try:
        argv, env = _command(spec, report, project, run)
        run.checkpoints.mkdir()
        manifest = Manifest(
            run_id=run.run_id,
            created_at=_now().isoformat(timespec="seconds"),
            experiment=exp.id,
            experiment_dir=str(exp.dir),
            source=exp.source,
            title=exp.title,
            hypothesis=exp.hypothesis,
            trainer=spec.name,
            primary_metric=spec.primary_metric,
            primary_mode=spec.primary_mode,
            config=report.config,
            overrides=report.overrides,
            argv=argv,
            env=env,
            cwd=str(project),
            project_dir=str(project),
            agent=agent,
            note=note,
            acknowledged=acknowledged,
            watchdog=exp.watchdog,
            resource="gpu"
            if torch_info.get("devices") and report.config.get("device") not in ("cpu", "mps")
            else "cpu",
            backend=report.backend,
            resources=report.resources,
            resume_flag=spec.params["resume"].flag if "resume" in spec.params and spec.resume_checkpoint else None,
            resume_checkpoint=spec.resume_checkpoint,
            chance=(spec.chance | exp.chance) or None,
            remedies=spec.remedies,
            sweep_id=sweep[0] if sweep else None,
            trial=sweep[1] if sweep else None,
            git_commit=_git_commit(project),
            versions={
                "trainguard": __version__,
                "python": torch_info.get("python"),
                "torch": torch_info.get("torch"),
                "cuda": torch_info.get("cuda"),
                "hip": torch_info.get("hip"),
            },
            host={"hostname": socket.gethostname(), "platform": platform.platform(), "user": getpass.getuser()},
            gpus=torch_info.get("devices", []),
            preflight={"verdict": report.verdict, "warnings": [c.detail for c in report.checks if c.verdict == "warn"]},
        )
        # The state first: a folder with a manifest is a run, and every run has a state.
        run.write_state(RunState(status="starting", updated_at=time.time()))
        write_json_atomic(run.manifest, manifest.model_dump(mode="json"))
        state = backends.get(report.backend).start(run)
    except BaseException as exc:
        _discard(run)
        if isinstance(exc, OSError):
            raise _launch_error(root, exc) from None
        raise

    parts = [f"launched {run.run_id} ({exp.title})"]
    if report.overrides:
        parts.append("overrides " + ", ".join(f"{k}={v}" for k, v in report.overrides.items()))
    if acknowledged:
        parts.append(f"acknowledged danger rules: {', '.join(acknowledged)}")
    if note:
        parts.append(f"note: {note}")
    pad_note = ""
    try:
        scratchpad.append(project, agent, "; ".join(parts), kind="launch")
    except (OSError, TrainguardError) as exc:  # the run is started: say so, whatever the scratchpad does
        pad_note = f" (The scratchpad entry was not written: {exc}.)"
    return LaunchResult(
        run_id=run.run_id,
        status=state.status,
        dry_run=False,
        run_dir=str(run.path),
        argv=argv,
        env=env,
        pid=state.pid,
        config=report.config,
        preflight_verdict=report.verdict,
        preflight_notes=notes,
        acknowledged=acknowledged,
        next_step=(
            f"Queued: it starts when a {state.resource or 'device'} slot frees; stop_run cancels it. "
            if state.status == "queued"
            else ""
        )
        + f"wait_run('{run.run_id}') waits for its end or a watchdog event; then summarize_run."
        + pad_note,
    )


def _launch_error(root: Path, exc: OSError) -> TrainguardError:
    """What a launch that failed on the file system tells the caller (nothing was left behind)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = disk_full(root) or f"disk full on {root}"
        return Conflict(
            f"{full}; nothing launched and nothing left behind. Free space (old runs' checkpoints) "
            "or move TRAINGUARD_RUNS_DIR to a bigger disk, then launch again."
        )
    return TrainguardError(
        f"could not create the run in {root}: {exc.strerror or exc}; nothing launched. "
        "Check that the folder is writable, or set TRAINGUARD_RUNS_DIR."
    )


def _discard(run: RunDir) -> None:
    """Remove a run folder a failed launch made (never following a link out of it)."""
    shutil.rmtree(run.path, ignore_errors=True)


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
            "danger rules fired, nothing launched: "
            + " | ".join(details)
            + f". Change the settings, or tell the user and pass acknowledge={missing}."
        )
    return list(report.danger_fired)


def _backend(run: RunDir) -> backends.Backend:
    return backends.get(run.read_manifest().backend)


def refresh(run: RunDir) -> RunState:
    """The run's state, corrected by its backend when the backend knows better (the local
    backends: a supervisor that died without recording an outcome)."""
    state = run.read_state()
    if state.status in TERMINAL:
        return state
    return _backend(run).refresh(run, state)


def info_fields(
    run: RunDir, manifest: Manifest, state: RunState, summary: CurveSummary | None = None
) -> dict[str, Any]:
    """A run's row. Its headline and findings are those its supervisor recorded at the end, else
    those of `summary` or of the run's curves (summarised again only when a log changed)."""
    end = state.finished_at or time.time()
    if summary is None and not (state.status in TERMINAL and state.headline is not None):
        summary = summarize_run_dir(run.path, manifest, copy=False)  # only read here
    headline = summary.headline if summary is not None else state.headline or ""
    if summary is not None:
        findings = len(serious_findings(summary.findings))
    else:  # None: a run that ended before its supervisor recorded them
        findings = len(state.findings) if state.findings is not None else None
    return {
        "run_id": run.run_id,
        "experiment": manifest.experiment,
        "backend": manifest.backend,
        "nproc": manifest.resources.nproc * manifest.resources.nodes,
        "job_id": state.job_id,
        "slurm_state": state.slurm_state,
        "queue_reason": state.slurm_reason if state.status == "queued" else None,
        "requeues": state.requeues,
        "stopped_because": budget.clip(state.stopped_because, 300),
        "sweep_id": manifest.sweep_id,
        "trial": manifest.trial,
        "status": state.status,
        "created_at": manifest.created_at,
        "elapsed_s": round(end - state.started_at, 1) if state.started_at else None,
        "pid": state.pid,
        "exit_code": state.exit_code,
        "signal": state.signal,
        "failure": budget.clip(state.failure, 300),
        "headline": budget.clip(headline, 240),
        "findings": findings,
        "queue_position": (
            len(
                slots.queued_before(
                    run.path.parent, run.run_id, state.resource or "cpu", state.queued_at or time.time()
                )
            )
            + 1
            if state.status == "queued" and manifest.backend != "slurm"
            else None
        ),
    }


class RunPage(BaseModel):
    """A page of `list_runs`, newest first."""

    runs: list[RunInfo]
    total: int  # runs in the folder
    offset: int
    next_offset: int | None  # pass it as offset for the next page; None on the last one
    runs_dir: str


def row(run: RunDir) -> RunInfo:
    """One run's row (list_runs', the dashboard's); a damaged run is a row that says what is
    wrong and what to do."""
    try:
        manifest = run.read_manifest()
        fields = info_fields(run, manifest, refresh(run))
        return RunInfo(**fields)
    except TrainguardError as exc:
        return RunInfo(
            run_id=run.run_id,
            experiment="?",
            status="damaged",
            created_at="",
            elapsed_s=None,
            pid=None,
            exit_code=None,
            signal=None,
            failure=None,
            headline="",
            error=budget.clip(str(exc), 400),
        )


def list_runs(project: Path | None = None, limit: int = 20, offset: int = 0) -> RunPage:
    """A page of the runs, newest first, within the answer budget (a page may hold fewer than
    `limit` runs; `next_offset` says where the next one starts)."""
    root = paths.runs_root(project or paths.project_root())
    found = newest_runs(root)
    rows, next_offset = budget.page(found, offset, limit, lambda path: row(RunDir(Path(path))))
    return RunPage(runs=rows, total=len(found), offset=offset, next_offset=next_offset, runs_dir=str(root))


MAX_LATEST = 24  # metrics shown in run_status: the primary first, then the summary's order


def status(run_id: str, project: Path | None = None) -> RunStatus:
    """Status of one run: state, latest metric values, checkpoints; stderr's end if it failed."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    manifest, state = run.read_manifest(), refresh(run)
    return status_of(run, manifest, state, summarize_run_dir(run.path, manifest))


def status_of(run: RunDir, manifest: Manifest, state: RunState, summary: CurveSummary) -> RunStatus:
    """`status` from what its caller has read already (the dashboard's run page)."""
    fields = info_fields(run, manifest, state, summary)
    shown = ([summary.primary] if summary.primary else []) + summary.metrics
    latest = {budget.clip(m.name, 80): m.last.value for m in shown[:MAX_LATEST] if m.last is not None}
    omitted = len(shown) - min(len(shown), MAX_LATEST) + len(summary.omitted_metrics)
    epochs = [int(m.last.epoch) for m in shown if m.last is not None and m.last.epoch is not None]
    ckpts = _list_outputs(run.checkpoints)
    epochs_cfg = manifest.config.get("epochs")
    return RunStatus(
        **fields,
        epoch=max(epochs) if epochs else None,
        epochs=epochs_cfg if isinstance(epochs_cfg, int) and not isinstance(epochs_cfg, bool) else None,
        latest=latest,
        latest_omitted=omitted,
        checkpoints=ckpts,
        stderr_tail=textlog.tail(run.stderr) if state.status in ("failed", "lost") else None,
        run_dir=str(run.path),
        events=[_short_event(e) for e in state.events[-MAX_EVENTS:]],
        events_total=len(state.events),
    )


MAX_EVENTS = 8


def _short_event(event: dict[str, Any]) -> dict[str, Any]:
    return {k: budget.clip(v, 200) if isinstance(v, str) else v for k, v in list(event.items())[:6]}


MAX_LISTED_FILES = 20


def _list_outputs(folder: Path) -> list[str]:
    """Regular files the trainer wrote (relative paths, models/ppo.pth too), breadth first,
    never through a link, temp and hidden files left out, bounded."""
    found = [
        budget.clip(str(p.relative_to(folder)), 160) or ""
        for p in safefiles.walk(folder, max_depth=8, max_files=MAX_LISTED_FILES + 1)
    ]
    return found if len(found) <= MAX_LISTED_FILES else [*found[:MAX_LISTED_FILES], "..."]


def summary(
    run_id: str, project: Path | None = None, primary_metric: str | None = None
) -> tuple[RunInfo, CurveSummary]:
    """The run and its curves' summary (around `primary_metric` if given, else the spec's)."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    manifest, state = run.read_manifest(), refresh(run)
    summ = summarize_run_dir(run.path, manifest)
    fields = info_fields(run, manifest, state, summ)
    if primary_metric and primary_metric != manifest.primary_metric:
        with curves_load.loaded(run.path) as found:
            summ = summarize(found, primary_metric, chance=manifest.chance or None, remedies=manifest.remedies)
    return RunInfo(**fields), summ


def summarize_path(path: str, primary_metric: str | None = None, project: Path | None = None) -> CurveSummary:
    """The curves of any log folder or file inside the project (a run of the user's own).

    Raises:
        InvalidInput: for a path outside the project, or one that does not exist.
    """
    project = project or paths.project_root()
    target = paths.confine(project, path, "path")
    if not target.exists():
        raise InvalidInput(f"{path} does not exist in the project; give a folder or file that holds training logs.")
    with curves_load.loaded(target) as found:
        return summarize(found, primary_metric)


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
                raise InvalidInput(
                    f"run {run_id} has no metric {', '.join(map(repr, unknown))}; it has: "
                    + ", ".join(list(curves.series)[:30])
                )
        else:
            names = curves_plot.default_metrics(curves, resolve_metric(curves, manifest.primary_metric))
            if not names:
                raise InvalidInput(f"run {run_id} has no metric with two finite points yet; wait_run, then plot.")
        out = run.path / "plot.png"
        drawn = curves_plot.plot_curves(curves, names, f"{run_id} ({manifest.title[:60]})", out)
    return out, drawn


def stop(
    run_id: str,
    grace_s: float = 30.0,
    project: Path | None = None,
    *,
    outcome: Literal["stopped", "pruned"] = "stopped",
    because: str | None = None,
) -> StopResult:
    """Ask the trainer to stop (SIGTERM: it checkpoints), then SIGKILL what is left of it after
    `grace_s`. Only processes verified as the run's are signalled (procs.RunProcesses). The run
    is recorded as `outcome` (a sweep's pruner asks for `pruned`) with `because` as the reason."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    state = refresh(run)
    if state.status in TERMINAL:
        return StopResult(
            run_id=run_id,
            status=state.status,
            how="none",
            processes_left=0,
            message=f"run already ended ({state.status}); nothing to stop.",
        )
    write_json_atomic(run.stop_marker, {"requested_at": time.time(), "outcome": outcome, "because": because})
    backend = _backend(run)
    how = backend.stop(run, state, grace_s)
    state = refresh(run)
    deadline = time.monotonic() + FINALIZE_TIMEOUT_S
    while state.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        state = refresh(run)
    if how == "none" and state.status == "stopped" and state.pid is None:
        how = "cancelled while queued"
    left = backend.processes_left(run, state)
    return StopResult(
        run_id=run_id,
        status=state.status,
        how=how,
        processes_left=left,
        message=f"run {state.status}; " + ("no process of it is left." if not left else f"{left} processes remain!"),
    )


def diagnose_run(run_id: str, project: Path | None = None) -> diagnose.Diagnosis:
    """How the run ended (or how it is doing), classified, with evidence and remedies."""
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    return diagnose.diagnose(run, refresh(run))


LogStream = Literal["stderr", "stdout", "metrics", "supervisor"]
LOG_STREAMS: tuple[str, ...] = get_args(LogStream)


def tail_log(
    run_id: str, stream: LogStream = "stderr", lines: int = 50, pattern: str | None = None, project: Path | None = None
) -> textlog.LogTail:
    """The last `lines` lines of one of the run's logs (matching `pattern`), bounded and cleaned.

    Raises:
        InvalidInput: for an unknown stream, a bad line count or pattern.
    """
    if stream not in LOG_STREAMS:
        raise InvalidInput(f"stream {stream!r} is not one of {list(LOG_STREAMS)}.")
    run = open_run(paths.runs_root(project or paths.project_root()), run_id)
    path = {"stderr": run.stderr, "stdout": run.stdout, "metrics": run.metrics, "supervisor": run.supervisor_log}[
        stream
    ]
    picked, matched, truncated = textlog.tail_lines(path, lines, pattern)
    size = os.lstat(path).st_size if safefiles.is_regular(path) else 0
    return textlog.LogTail(
        run_id=run_id, stream=stream, lines=picked, matched=matched, truncated=truncated, file_bytes=size
    )


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
    spec = registry.load_trainer(manifest.trainer, project)
    if not spec.resume_checkpoint:
        raise InvalidInput(
            f"trainer {spec.name!r} names no resume_checkpoint in its spec, so its runs cannot be "
            "resumed; launch_run the experiment again instead."
        )
    found = sorted(
        (p for p in run.checkpoints.glob(spec.resume_checkpoint) if safefiles.is_regular(p)),
        key=lambda p: os.lstat(p).st_mtime,
    )
    if not found:
        raise NotFound(
            f"run {run_id} left no checkpoint matching {spec.resume_checkpoint!r} in {run.checkpoints} "
            "(it ended before its first one); launch_run the experiment again instead."
        )
    checkpoint = found[-1]
    if not checkpoint.resolve().is_relative_to(project.resolve()):
        raise InvalidInput(
            f"the checkpoint {checkpoint} is outside the project {project} (TRAINGUARD_RUNS_DIR?); "
            "copy it into the project and pass it as the resume override of launch_run."
        )
    merged = {
        **manifest.overrides,
        **(overrides or {}),
        "resume": str(checkpoint.resolve().relative_to(project.resolve())),
    }
    acks = sorted(set(manifest.acknowledged) | set(acknowledge or []))
    why = f"resume of {run_id} from {checkpoint.name}" + (f"; {note}" if note else "")
    return launch(
        manifest.experiment,
        merged,
        note=why,
        agent=agent,
        acknowledge=acks,
        dry_run=dry_run,
        project=project,
        backend=manifest.backend,
        resources=manifest.resources.model_dump(),
    )


class RunSummaryResult(BaseModel):
    """`summarize_run` (and `trainguard summary --json`): the run, and its curves' summary."""

    run: RunInfo | None  # None when a folder or file was summarised
    summary: CurveSummary


def summarize_target(
    run_id: str | None = None, path: str | None = None, primary_metric: str | None = None, project: Path | None = None
) -> RunSummaryResult:
    """The summary of one run (`run_id`) or of a log folder or file of the user's own (`path`).

    Raises:
        InvalidInput: unless exactly one of `run_id` and `path` is given.
    """
    if (run_id is None) == (path is None):
        raise InvalidInput("Give either run_id (see list_runs) or path (a log folder or file in the project).")
    if run_id is not None:
        info, summ = summary(run_id, project, primary_metric)
        return RunSummaryResult(run=info, summary=summ)
    assert path is not None
    return RunSummaryResult(run=None, summary=summarize_path(path, primary_metric, project))


class PlotResult(BaseModel):
    """`plot_run`: where the PNG went, and what it shows."""

    run_id: str
    path: str  # the PNG, in the run's folder
    metrics: list[str]  # drawn, in panel order


def plot_result(run_id: str, metrics: list[str] | None = None, project: Path | None = None) -> PlotResult:
    """`plot`, as the model the tool and the CLI return."""
    out, drawn = plot(run_id, metrics, project)
    return PlotResult(run_id=run_id, path=str(out), metrics=drawn)


MAX_GRACE_S = 600.0  # stop_run: SIGTERM to SIGKILL at most this long
MAX_WAIT_S = 3600.0  # wait_run's longest wait
POLL_S = (0.1, 60.0)  # wait_run's poll interval, least and most


class WaitResult(BaseModel):
    """`wait_run`: why the wait ended, and the run's status then."""

    reason: Literal["finished", "event", "timeout"]
    waited_s: float
    new_events: list[dict[str, Any]]
    run: RunStatus


Progress = Callable[[RunStatus, float], Awaitable[None]]  # the status, seconds waited so far


async def wait(
    run_id: str,
    timeout_s: float | None,
    poll_s: float,
    progress: Progress | None = None,
    *,
    stop_on_event: bool = True,
    project: Path | None = None,
) -> WaitResult:
    """Poll the run's status every `poll_s` until it ends, a watchdog event is recorded (with
    `stop_on_event`) or `timeout_s` passes (None: no limit). `progress` hears each status that
    does not end the wait. Statuses are read in a worker thread: the event loop keeps serving."""
    t0 = time.monotonic()

    def read() -> RunStatus:
        return status(run_id, project)

    st = await anyio.to_thread.run_sync(read)
    seen = len(st.events)
    while True:
        waited = time.monotonic() - t0
        if st.status in TERMINAL:
            reason: Literal["finished", "event", "timeout"] = "finished"
            break
        if stop_on_event and len(st.events) > seen:
            reason = "event"
            break
        if timeout_s is not None and waited >= timeout_s:
            reason = "timeout"
            break
        if progress is not None:
            await progress(st, waited)
        left = poll_s if timeout_s is None else max(0.05, timeout_s - waited)
        await anyio.sleep(min(poll_s, left))
        st = await anyio.to_thread.run_sync(read)
    return WaitResult(reason=reason, waited_s=round(time.monotonic() - t0, 1), new_events=st.events[seen:], run=st)
