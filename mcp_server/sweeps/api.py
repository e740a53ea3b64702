"""The sweep operations the tools and the CLI call: launch, status, stop, promote, revive.

Nothing here imports Optuna (the server stays light): a sweep's driver process does the
searching (`mcp_server.sweeps.driver`); these functions write its folder, start it, and read
the `state.json` it keeps.
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server import budget, paths, procs, registry, scratchpad
from mcp_server import runs as runs_mod
from mcp_server.errors import Conflict, InvalidInput, NotFound, TrainguardError
from mcp_server.rundir import write_json_atomic
from mcp_server.specs import Scalar
from mcp_server.sweeps import folder as sweepdir
from mcp_server.sweeps.folder import SWEEP_DONE, TRIAL_LIVE, SweepDir, SweepState, TrialRow, spec_summary
from mcp_server.sweeps.spec import resolve, values_of

log = logging.getLogger("trainguard.sweeps")
START_TIMEOUT_S = 20.0
TABLE_ROWS = (1, 50)  # sweep_status's `limit`: least and most rows
MAX_PROMOTE = 5
MAX_OTHER_SWEEPS = 10
IMPORTANCE_MIN_TRIALS = 6  # the driver's: complete trials before parameter importance means anything


class SweepLaunch(BaseModel):
    """What `launch_sweep` started."""

    sweep_id: str
    experiment: str
    status: str
    settings: dict[str, Any]
    space: dict[str, Any]
    overrides: dict[str, Scalar]
    grid_points: int | None  # a grid's size
    sweep_dir: str
    next_step: str


class TrialLine(BaseModel):
    """One row of `sweep_status`'s table."""

    trial: int
    run_id: str | None
    params: dict[str, Any]  # only the parameters that differ between trials
    status: str
    best: float | None
    at: str | None  # "epoch 7"
    pruned_at: int | None = None
    reason: str | None = None


class SweepStatus(BaseModel):
    """`sweep_status`: the sweep's table, best first, and what is left."""

    sweep_id: str
    experiment: str
    status: str
    settings: dict[str, Any]
    metric: str
    direction: str
    trials_total: int  # max_trials
    counts: dict[str, int]  # trials by status
    trials_left: int  # not yet asked for
    best: TrialLine | None
    best_config: dict[str, Any] | None  # every swept parameter of the best trial (with the sweep's overrides)
    table: list[TrialLine]  # best first, then the live ones, then the rest
    table_omitted: int = 0
    importance: dict[str, float] | None
    importance_note: str | None = None
    elapsed_s: float | None
    restarts: int
    driver_alive: bool
    failure: str | None = None
    other_sweeps: list[dict[str, str]] = []  # the project's (or the experiment's) other sweeps, newest first
    next_step: str


class SweepStop(BaseModel):
    """`stop_sweep`: how it ended."""

    sweep_id: str
    status: str
    trials_stopped: int  # trials whose runs were going (queued or running)
    processes_left: int
    message: str


class Promoted(BaseModel):
    """`promote_sweep`: the full runs launched for the best configurations."""

    sweep_id: str
    launched: list[dict[str, Any]]  # run_id, trial, params, status, the trial's best
    dry_run: bool
    next_step: str


def _runs_root(project: Path) -> Path:
    return paths.runs_root(project)


def launch_sweep(
    experiment: str,
    *,
    space: dict[str, Any] | None = None,
    strategy: str | None = None,
    max_trials: int | None = None,
    parallel: int | None = None,
    metric: str | None = None,
    prune: Any = None,
    trial_budget_s: float | None = None,
    overrides: dict[str, Any] | None = None,
    acknowledge: list[str] | None = None,
    seed: int | None = None,
    note: str = "",
    agent: str = "training-runner",
    direction: str | None = None,
    project: Path | None = None,
) -> SweepLaunch:
    """Check the sweep (its sweep.toml with these arguments over it) and start its driver.

    Raises:
        InvalidInput / NotFound: a bad space, strategy, parameter or rule id, with the fix.
        TrainguardError: the driver did not start (nothing is left running).
    """
    project = project or paths.project_root()
    scratchpad.agent_dir(project, agent)
    note = scratchpad.clean_text(note, limit=1000) if note else ""
    raw = {
        "space": space,
        "strategy": strategy,
        "max_trials": max_trials,
        "parallel": parallel,
        "metric": metric,
        "direction": direction,
        "prune": prune,
        "trial_budget_s": trial_budget_s,
        "overrides": overrides,
        "acknowledge": acknowledge,
        "seed": seed,
    }
    exp_id = registry.load_experiment(experiment, project).id
    now = dt.datetime.now()
    stem = f"{exp_id[:3]}-sweep-{now:%Y%m%d-%H%M%S}"
    spec = resolve(
        experiment, raw, project, sweep_id=stem, created_at=now.isoformat(timespec="seconds"), agent=agent, note=note
    )
    folder = sweepdir.create(_runs_root(project), stem)
    spec.sweep_id = folder.sweep_id
    try:
        write_json_atomic(folder.spec_file, spec.model_dump(mode="json"))
        folder.write_state(SweepState(status="starting", updated_at=time.time(), parallel=spec.parallel))
        state = _wait_started(folder, _start_driver(folder))
    except BaseException:
        _discard(folder)
        raise
    shown = {k: (values_of(v) if values_of(v) is not None else v.model_dump()) for k, v in spec.space.items()}
    try:
        scratchpad.append(
            project,
            agent,
            f"launched sweep {folder.sweep_id} of {spec.experiment}: {spec.strategy}, {spec.max_trials} trials, "
            f"{spec.metric} ({spec.direction}), prune {spec.prune.kind}; space {budget.clip(str(shown), 300)}"
            + (f"; note: {note}" if note else ""),
            kind="sweep",
        )
    except (OSError, TrainguardError) as exc:
        log.warning("scratchpad not written: %s", exc)
    return SweepLaunch(
        sweep_id=folder.sweep_id,
        experiment=spec.experiment,
        status=state.status,
        settings=spec_summary(spec),
        space=shown,
        overrides=spec.overrides,
        grid_points=len(spec.grid) if spec.strategy == "grid" else None,
        sweep_dir=str(folder.path),
        next_step=f"The sweep runs by itself (it survives this session). sweep_status('{folder.sweep_id}') "
        "every few minutes shows the table, best first; stop_sweep stops it; promote_sweep runs the best "
        "configurations in full.",
    )


def _discard(folder: SweepDir) -> None:
    import shutil

    shutil.rmtree(folder.path, ignore_errors=True)


def _start_driver(folder: SweepDir) -> subprocess.Popen:
    return procs.start_detached(
        "mcp_server.sweeps.driver", folder.path, folder.driver_log, paths.PLUGIN_ROOT, paths.SOURCE_TREE
    )


def _wait_started(folder: SweepDir, proc: subprocess.Popen) -> SweepState:
    """The state once the driver has taken the sweep over.

    Raises:
        TrainguardError: it failed, exited or did not start in time (it is killed then: the
            caller removes the folder).
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        state = folder.read_state()
        if state.status == "failed":
            raise TrainguardError(f"the sweep's driver failed at once: {state.failure}")
        if state.status != "starting":
            return state
        if proc.poll() is not None or time.monotonic() >= deadline:
            if proc.poll() is None:
                proc.kill()  # our own child, unreaped: its pid is still its own
                proc.wait()
            elif folder.read_state().status != "starting":
                continue
            from mcp_server import textlog

            raise TrainguardError(
                f"the sweep's driver did not start (exit code {proc.returncode}): "
                f"{textlog.tail(folder.driver_log, lines=5, max_chars=600) or 'no output'}; nothing launched."
            )
        time.sleep(0.05)


def revive(project: Path | None = None) -> list[str]:
    """Start a driver for every sweep that should be running and has none (its driver died with
    a reboot or a kill): the sweep goes on where its state and study left it. Returns their ids."""
    project = project or paths.project_root()
    revived = []
    for folder in sweepdir.all_sweeps(_runs_root(project)):
        try:
            state = folder.read_state()
        except (OSError, TrainguardError):
            continue
        if state.status in SWEEP_DONE or folder.stop_marker.exists() or folder.driver_alive():
            continue
        if state.status == "starting" and time.time() - state.updated_at < START_TIMEOUT_S:
            continue  # its first driver is still coming up
        log.info("sweep %s has no driver; starting one (it goes on where it stopped)", folder.sweep_id)
        _start_driver(folder)
        revived.append(folder.sweep_id)
    return revived


def _refresh(folder: SweepDir) -> tuple[SweepState, bool]:
    state = folder.read_state()
    alive = folder.driver_alive()
    if state.status not in SWEEP_DONE and not alive and not folder.stop_marker.exists():
        revive_one = time.time() - state.updated_at >= START_TIMEOUT_S or state.status != "starting"
        if revive_one:
            _start_driver(folder)
            alive = True
    return state, alive


def _line(row: TrialRow, differing: list[str]) -> TrialLine:
    return TrialLine(
        trial=row.number,
        run_id=row.run_id,
        params={k: row.params.get(k) for k in differing},
        status=row.status,
        best=None if row.best is None else round(row.best, 6),
        at=None if row.best_at is None else f"{row.at_unit} {row.best_at}",
        pruned_at=row.pruned_at,
        reason=budget.clip(row.reason, 240),
    )


def _best(rows: list[TrialRow], maximize: bool) -> TrialRow | None:
    done = [r for r in rows if r.status == "complete" and r.best is not None]
    if not done:
        return None
    return max(done, key=lambda r: r.best if maximize else -(r.best or 0.0))  # type: ignore[arg-type, return-value]


def _ranked(rows: list[TrialRow], maximize: bool) -> list[TrialRow]:
    """Best first: trials with a value by it (complete ahead of pruned at equal value), then the
    rest by number."""
    with_value = [r for r in rows if r.best is not None]
    rest = [r for r in rows if r.best is None]
    with_value.sort(key=lambda r: ((-(r.best or 0.0)) if maximize else (r.best or 0.0), r.status != "complete"))
    return with_value + sorted(rest, key=lambda r: r.number)


def _pick(
    runs_root: Path, sweep_id: str | None, experiment: str | None, project: Path
) -> tuple[SweepDir, list[SweepDir]]:
    everything = sweepdir.all_sweeps(runs_root)
    if sweep_id is not None:
        chosen = sweepdir.open_sweep(runs_root, sweep_id)
        return chosen, [s for s in everything if s.sweep_id != chosen.sweep_id]
    pool = everything
    if experiment is not None:
        exp_id = registry.load_experiment(experiment, project).id
        pool = [s for s in everything if s.sweep_id.startswith(exp_id[:3] + "-")]
        if not pool:
            raise NotFound(f"experiment {exp_id} has no sweep yet; launch_sweep('{exp_id}') starts one.")
    if not pool:
        raise NotFound("this project has no sweep yet; launch_sweep(experiment, space) starts one.")
    return pool[0], pool[1:]


def sweep_status(
    sweep_id: str | None = None,
    experiment: str | None = None,
    limit: int = 20,
    project: Path | None = None,
    *,
    revive: bool = True,
) -> SweepStatus:
    """The sweep's table, best first (a sweep of `experiment`, or the newest, when no id is
    given), within the answer budget. A sweep whose driver died is given a new one (unless
    `revive` is False: a reader that only reports).

    Raises:
        InvalidInput / NotFound: a bad id, or no sweep.
    """
    if not TABLE_ROWS[0] <= limit <= TABLE_ROWS[1]:
        raise InvalidInput(f"limit is {limit}; pass {TABLE_ROWS[0]} to {TABLE_ROWS[1]}.")
    project = project or paths.project_root()
    root = _runs_root(project)
    folder, others = _pick(root, sweep_id, experiment, project)
    spec = folder.read_spec()
    state, alive = _refresh(folder) if revive else (folder.read_state(), folder.driver_alive())
    maximize = spec.direction == "max"
    rows = state.trials
    differing = [k for k in spec.space if len({repr(r.params.get(k)) for r in rows}) > 1] or list(spec.space)
    ranked = _ranked(rows, maximize)
    best = _best(rows, maximize)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    complete = counts.get("complete", 0)
    end = state.finished_at or time.time()
    table, omitted = _table(ranked, differing, limit)
    return SweepStatus(
        sweep_id=folder.sweep_id,
        experiment=spec.experiment,
        status=state.status,
        settings=spec_summary(spec) | {"parallel": state.parallel or spec.parallel},
        metric=spec.metric,
        direction=spec.direction,
        trials_total=spec.max_trials,
        counts=counts,
        trials_left=max(0, spec.max_trials - len(rows)),
        best=_line(best, differing) if best else None,
        best_config={**spec.overrides, **best.params} if best else None,
        table=table,
        table_omitted=omitted,
        importance=state.importance,
        importance_note=None
        if state.importance
        else f"parameter importance (PED-ANOVA) comes with {IMPORTANCE_MIN_TRIALS} complete trials ({complete} so far)",
        elapsed_s=round(end - state.started_at, 1) if state.started_at else None,
        restarts=state.restarts,
        driver_alive=alive,
        failure=budget.clip(state.failure, 600),
        other_sweeps=[_other(s) for s in others[:MAX_OTHER_SWEEPS]],
        next_step=_next_step(folder.sweep_id, state, best),
    )


def _table(ranked: list[TrialRow], differing: list[str], limit: int) -> tuple[list[TrialLine], int]:
    """The first `limit` rows that fit the answer budget; live trials always shown."""
    live = [r for r in ranked if r.status in TRIAL_LIVE]
    head = [r for r in ranked if r.status not in TRIAL_LIVE]
    chosen = head[: max(0, limit - len(live))] + live[:limit]
    lines, used = [], 0
    for row in chosen:
        line = _line(row, differing)
        used += len(line.model_dump_json(exclude_none=True))
        if used > budget.ANSWER_CHARS - 2500:
            break
        lines.append(line)
    return lines, len(ranked) - len(lines)


def _other(folder: SweepDir) -> dict[str, str]:
    try:
        state = folder.read_state()
        return {"sweep_id": folder.sweep_id, "status": state.status, "trials": str(len(state.trials))}
    except (OSError, TrainguardError) as exc:
        return {"sweep_id": folder.sweep_id, "status": "damaged", "error": budget.clip(str(exc), 120)}


def _next_step(sweep_id: str, state: SweepState, best: TrialRow | None) -> str:
    if state.status in SWEEP_DONE:
        if best is None:
            return "No trial completed; diagnose_run on a failed trial's run says why."
        return (
            f"Done. promote_sweep('{sweep_id}', top_k=1) runs the best configuration in full; "
            f"summarize_run('{best.run_id}') shows the best trial's curves."
        )
    return f"Still running; sweep_status('{sweep_id}') again in a few minutes, or stop_sweep('{sweep_id}')."


def stop_sweep(sweep_id: str, project: Path | None = None, wait_s: float = 120.0) -> SweepStop:
    """Stop the sweep: no new trial starts, each live one is stopped (SIGTERM: it checkpoints).
    The driver does it if it lives; else this call does, holding the sweep's lock."""
    project = project or paths.project_root()
    folder = sweepdir.open_sweep(_runs_root(project), sweep_id)
    state = folder.read_state()
    if state.status in SWEEP_DONE:
        return SweepStop(
            sweep_id=sweep_id,
            status=state.status,
            trials_stopped=0,
            processes_left=0,
            message=f"the sweep already ended ({state.status}); nothing to stop.",
        )
    live_before = sum(r.status in TRIAL_LIVE and r.run_id is not None for r in state.trials)
    write_json_atomic(folder.stop_marker, {"requested_at": time.time()})
    deadline = time.monotonic() + wait_s
    left = 0
    while time.monotonic() < deadline:
        with folder.locked() as mine:
            if mine:  # no driver: this call stops the trials and records it
                state = folder.read_state()
                if state.status not in SWEEP_DONE:
                    left = stop_live_trials(state, _runs_root(project), project, "stop_sweep asked the sweep to stop")
                    state.status, state.finished_at = "stopped", time.time()
                    folder.write_state(state)
                break
        state = folder.read_state()
        if state.status in SWEEP_DONE:
            break
        time.sleep(0.2)
    state = folder.read_state()
    left += _processes_left(state, _runs_root(project))
    return SweepStop(
        sweep_id=sweep_id,
        status=state.status,
        trials_stopped=live_before,
        processes_left=left,
        message=f"sweep {state.status}; "
        + ("no process of its trials is left." if not left else f"{left} processes of its trials remain!"),
    )


def stop_live_trials(state: SweepState, runs_root: Path, project: Path, why: str) -> int:
    """Stop every live trial of the sweep (each run: SIGTERM, it checkpoints) and mark it
    stopped; returns how many processes are left. The caller holds the sweep's lock and
    writes the state."""
    from mcp_server.rundir import open_run

    left = 0
    for row in state.trials:
        if row.status not in TRIAL_LIVE:
            continue
        if row.run_id is not None:
            try:
                run = open_run(runs_root, row.run_id)
                result = runs_mod.stop(row.run_id, run.read_manifest().watchdog.stop_grace_s, project, because=why)
                left += result.processes_left
            except TrainguardError as exc:
                log.warning("trial %s (%s) not stopped: %s", row.number, row.run_id, exc)
        row.status, row.reason, row.finished_at = "stopped", why, time.time()
    return left


def _processes_left(state: SweepState, root: Path) -> int:
    from mcp_server.rundir import open_run

    left = 0
    for row in state.trials:
        if row.run_id is None:
            continue
        try:
            run = open_run(root, row.run_id)
            left += runs_mod._backend(run).processes_left(run, run.read_state())
        except TrainguardError:
            continue
    return left


def promote_sweep(
    sweep_id: str,
    top_k: int = 1,
    overrides: dict[str, Any] | None = None,
    *,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    project: Path | None = None,
) -> Promoted:
    """Launch the full-budget run of the sweep's best `top_k` configurations: each trial's
    parameters over the sweep's overrides, with `overrides` over both (e.g. quick_search=false,
    more epochs), through the same pre-flight as any launch.

    Raises:
        InvalidInput: top_k out of range. Conflict: no trial completed yet.
    """
    if not 1 <= top_k <= MAX_PROMOTE:
        raise InvalidInput(f"top_k is {top_k}; pass 1 to {MAX_PROMOTE}.")
    project = project or paths.project_root()
    folder = sweepdir.open_sweep(_runs_root(project), sweep_id)
    spec, state = folder.read_spec(), folder.read_state()
    ranked = [r for r in _ranked(state.trials, spec.direction == "max") if r.status == "complete"]
    if not ranked:
        raise Conflict(f"sweep {sweep_id} has no complete trial yet; sweep_status('{sweep_id}') shows where it is.")
    launched = []
    for row in ranked[:top_k]:
        config = {**spec.overrides, **row.params, **(overrides or {})}
        why = f"promoted from sweep {sweep_id} trial {row.number} ({spec.metric} {row.best:.4g})" + (
            f"; {note}" if note else ""
        )
        result = runs_mod.launch(
            spec.experiment,
            config,
            note=why,
            agent=agent,
            acknowledge=sorted(set(spec.acknowledge) | set(acknowledge or [])),
            dry_run=dry_run,
            project=project,
        )
        launched.append(
            {
                "trial": row.number,
                "trial_best": row.best,
                "run_id": result.run_id,
                "status": result.status,
                "overrides": {k: v for k, v in config.items()},
            }
        )
    return Promoted(
        sweep_id=sweep_id,
        launched=launched,
        dry_run=dry_run,
        next_step="Nothing was started (dry run)."
        if dry_run
        else "wait_run on each run id; compare_runs compares them with the sweep's trials.",
    )
