"""The sweep driver: the process that runs one sweep from its first trial to its last.

`launch_sweep` starts `python -m mcp_server.sweeps.driver SWEEP_DIR` in a session of its own,
so the sweep outlives the MCP server, as a run does. The driver holds the sweep's lock
(`folder.SweepDir.take_lock`) for its whole life and, once a second:

- watches each live trial: the trial's run folder is read incrementally (the same curve
  readers as `summarize_run`), each new epoch's value of the sweep's metric is reported to
  Optuna's pruner, and a trial the pruner calls a loser is stopped through `runs.stop` (SIGTERM:
  it checkpoints) and recorded `pruned` with the evidence; a trial past `trial_budget_s` of
  training is stopped the same way and counts with its best so far;
- records each ended trial in the Optuna study (complete with its best value, pruned, or
  failed) and in `state.json`;
- asks Optuna for the next configuration while fewer than `parallel` trials live, and launches
  it through `runs.launch`: the same pre-flight, danger rules, slots, supervisor and watchdog
  as any run. A configuration that fails pre-flight is recorded as skipped with its reason.

Optuna keeps the study in `optuna.journal` in the sweep folder; the driver keeps nothing in
memory that is not on disk, so a driver that dies (a reboot, a kill) is replaced by the next
server that starts (`sweeps.api.revive`) and the sweep goes on: trials still running are
taken over, not launched again. Only the driver imports Optuna; the server reads `state.json`.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from mcp_server import budget, paths, procs, runs, scratchpad, slots
from mcp_server.curves import load as curves_load
from mcp_server.curves.summary import find_metric
from mcp_server.errors import TrainguardError
from mcp_server.preflight import run_preflight
from mcp_server.rundir import TERMINAL, RunDir, RunState, all_runs, open_run
from mcp_server.sweeps.api import IMPORTANCE_MIN_TRIALS, stop_live_trials
from mcp_server.sweeps.folder import TRIAL_LIVE, SweepDir, SweepState, TrialRow
from mcp_server.sweeps.spec import Range, SweepSpec, values_of

log = logging.getLogger("trainguard.sweeps.driver")
POLL_S = 0.5
WRITE_EVERY_S = 5.0  # state.json at least this often while something changes
FAILED_PREFLIGHTS_TO_GIVE_UP = 3  # the first trials all refused: the cause is the sweep's, not a config's
STUDY = "sweep"


def _distribution(dimension: Any, param_type: str | None) -> BaseDistribution:
    listed = values_of(dimension)
    if listed is not None:
        return CategoricalDistribution(listed)
    assert isinstance(dimension, Range)
    if param_type == "int":
        return IntDistribution(
            int(dimension.low), int(dimension.high), log=dimension.log, step=int(dimension.step or 1)
        )
    return FloatDistribution(dimension.low, dimension.high, log=dimension.log, step=dimension.step)


def open_study(folder: SweepDir, spec: SweepSpec) -> optuna.Study:
    """The sweep's study in its journal file, created (with a grid's points queued in order) on
    the first call, loaded after."""
    for path in (folder.journal, folder.path / f"{folder.journal.name}.lock"):
        if path.is_symlink() or (path.exists() and not path.is_file()):  # Optuna opens them itself
            raise TrainguardError(f"{path} is not a regular file; trainguard does not write through links.")
    storage = JournalStorage(JournalFileBackend(str(folder.journal), lock_obj=JournalFileOpenLock(str(folder.journal))))
    if spec.strategy == "grid":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(
            {k: values_of(v) or [] for k, v in spec.space.items()}, seed=spec.seed
        )
    elif spec.strategy == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:  # TPE after a few random trials; constant_liar keeps parallel trials apart
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed, n_startup_trials=max(2, min(10, spec.max_trials // 3)), constant_liar=True
        )
    p = spec.prune
    if p.kind == "median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        )
    elif p.kind == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, p.warmup_epochs), reduction_factor=p.reduction_factor
        )
    else:
        pruner = optuna.pruners.NopPruner()
    direction = "maximize" if spec.direction == "max" else "minimize"
    try:
        return optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner, direction=direction
        )
        for point in spec.grid:  # seed 001's nested loops, in the order written
            study.enqueue_trial(point)
        return study


def metric_points(run_path: Path, metric: str, after: int | None) -> tuple[list[tuple[int, float]], str]:
    """The sweep metric's finite values logged after epoch (or step) `after`, as (at, value),
    from the run's curves read incrementally; and whether `at` counts epochs or steps."""
    with curves_load.loaded(run_path) as found:
        name = find_metric(found.curves, metric)
        if name is None:
            return [], "epoch"
        series = found.curves.series[name]
        values, epochs = series.values(), series.epochs()
        use_epochs = values.size > 0 and not np.isnan(epochs).any() and bool(np.all(np.diff(epochs) > 0))
        at = epochs if use_epochs else series.steps()
        start = 0 if after is None else int(np.searchsorted(at, after, side="right"))
        points = [(int(a), float(v)) for a, v in zip(at[start:], values[start:], strict=True) if math.isfinite(v)]
    return points, "epoch" if use_epochs else "step"


class Driver:
    """One sweep's loop. Every decision is written to `state.json` and the study before it is
    acted on, or is safe to take again after a restart."""

    def __init__(self, folder: SweepDir, spec: SweepSpec, state: SweepState, study: optuna.Study):
        self.folder, self.spec, self.state, self.study = folder, spec, state, study
        self.project = Path(spec.project_dir)
        self.runs_root = paths.runs_root(self.project)
        self.maximize = spec.direction == "max"
        self.trials: dict[int, optuna.Trial] = {}
        self.refused: dict[str, str] = {}  # config -> its pre-flight failure: pre-flight once per config
        self.warming: threading.Thread | None = None  # the waiting trial's pre-flight
        self.told: set[int] = set()  # trials the study has as finished though state.json had them live
        self.last_write = 0.0
        trainer_params = _trainer_param_types(spec)
        self.distributions = {k: _distribution(v, trainer_params.get(k)) for k, v in spec.space.items()}

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        self._take_over()
        while True:
            if self.folder.stop_marker.exists():
                self._stop_all("stop_sweep asked the sweep to stop")
                self.state.status = "stopped"
                break
            changed = any([self._watch(row) for row in self._launched()])
            changed = self._fill() or changed
            if not self._live() and self._exhausted():
                self.state.status = "finished"
                break
            if self.state.status != "running":
                break  # _fill gave up
            if changed or time.monotonic() - self.last_write > WRITE_EVERY_S:
                self._write()
            time.sleep(POLL_S)
        self.state.finished_at = time.time()
        self._importance()
        self._write()
        self._scratchpad_end()

    def _live(self) -> list[TrialRow]:
        return [row for row in self.state.trials if row.status in TRIAL_LIVE]

    def _exhausted(self) -> bool:
        return len(self.state.trials) >= self.spec.max_trials

    def _write(self) -> None:
        self.folder.write_state(self.state)
        self.last_write = time.monotonic()

    def _trial(self, row: TrialRow) -> optuna.Trial:
        if row.number not in self.trials:
            self.trials[row.number] = optuna.trial.Trial(self.study, row.trial_id)
        return self.trials[row.number]

    def _take_over(self) -> None:
        """After a restart: a trial recorded as launching may have got its run before the old
        driver died (its manifest names the trial), else it is launched now; one it had decided
        to prune (or found over budget) is stopped now; what it reported to the pruner is in
        the study, so it is not reported twice."""
        frozen = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for row in self._live():
            done = frozen.get(row.number)
            if done is not None and done.intermediate_values:
                row.last_at = max(done.intermediate_values)
            if done is not None and done.state.is_finished():
                self.told.add(row.number)  # the old driver told the study, then died before state.json
            if row.status in ("launching", "waiting") and row.run_id is None:
                row.run_id = self._run_of_trial(row.number)
                if row.run_id is None and row.status == "launching":
                    self._launch(row)
                elif row.run_id is not None:
                    row.status = "running"  # launched before the old driver died; _watch corrects it
            elif row.run_id is not None and (row.pruned_at is not None or row.budget_reached):
                # decided and written, then the old driver died: the stop may not have happened
                runs.stop(
                    row.run_id,
                    grace_s=30.0,
                    project=self.project,
                    outcome="pruned" if row.pruned_at is not None else "stopped",
                    because=f"sweep {self.spec.sweep_id}: {row.reason}",
                )

    def _run_of_trial(self, number: int) -> str | None:
        for run in all_runs(self.runs_root):
            try:
                manifest = run.read_manifest()
            except TrainguardError:
                continue
            if manifest.sweep_id == self.spec.sweep_id and manifest.trial == number:
                return run.run_id
        return None

    # -- trials ------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Launch trials while fewer than `parallel` are launched and live; then ask for the next
        one and run its pre-flight in the background while these train, so that a slot that
        frees is filled at once (a pre-flight traces a training step: seconds). True if any
        trial was asked for or launched."""
        changed = False
        while self.state.status == "running" and len(self._launched()) < (self.state.parallel or 1):
            row = self._waiting() or self._ask()
            if row is None:
                break
            self._launch(row)
            changed = True
            first = self.state.trials[:FAILED_PREFLIGHTS_TO_GIVE_UP]
            if len(self.state.trials) == FAILED_PREFLIGHTS_TO_GIVE_UP and all(r.status == "skipped" for r in first):
                self.state.status = "failed"
                self.state.failure = (
                    f"the first {FAILED_PREFLIGHTS_TO_GIVE_UP} trials were all refused, so the cause is likely "
                    f"the sweep's, not one configuration's: {first[-1].reason}"
                )
        if self.state.status == "running" and self._launched() and self._waiting() is None:
            row = self._ask(status="waiting")
            if row is not None:
                self.warming = threading.Thread(target=self._warm, args=(row,), name="warm-preflight", daemon=True)
                self.warming.start()
                changed = True
        return changed

    def _launched(self) -> list[TrialRow]:
        return [row for row in self.state.trials if row.status in ("launching", "queued", "running")]

    def _waiting(self) -> TrialRow | None:
        return next((row for row in self.state.trials if row.status == "waiting"), None)

    def _ask(self, status: str = "launching") -> TrialRow | None:
        """The next configuration from the sampler, recorded in the table (None when the sweep
        has all its trials)."""
        if self._exhausted():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the grid sampler's note on queued (fixed) trials
            trial = self.study.ask(self.distributions)
        self.trials[trial.number] = trial
        # Optuna names a trial by its number and, in its storage, by _trial_id: kept so a
        # driver taking over can reopen the same trial (optuna.trial.Trial(study, trial_id))
        row = TrialRow(number=trial.number, trial_id=trial._trial_id, params=dict(trial.params), status=status)
        self.state.trials.append(row)
        self._write()  # the trial is on disk before its run exists (see _take_over)
        return row

    def _warm(self, row: TrialRow) -> None:
        """Pre-flight a waiting trial's configuration: the launch then finds every probe's answer
        in the cache (the same process). Its verdict does not matter here; the launch decides."""
        try:
            run_preflight(self.spec.experiment, {**self.spec.overrides, **row.params}, self.project)
        except Exception as exc:  # noqa: BLE001 - a warm-up only: the launch runs it again and reports
            log.info("pre-flight of trial %s ahead of its launch: %s", row.number, exc)

    def _launch(self, row: TrialRow) -> None:
        if self.warming is not None:  # one pre-flight at a time: the probe cache is the process's
            self.warming.join()
            self.warming = None
        row.status = "launching"
        key = repr(sorted(row.params.items()))
        if key in self.refused:
            self._skip(row, self.refused[key])
            return
        shown = ", ".join(f"{k}={v}" for k, v in row.params.items())
        try:
            launched = runs.launch(
                self.spec.experiment,
                {**self.spec.overrides, **row.params},
                note=budget.clip(f"sweep {self.spec.sweep_id} trial {row.number}: {shown}", 400),
                agent=self.spec.agent,
                acknowledge=self.spec.acknowledge,
                project=self.project,
                sweep=(self.spec.sweep_id, row.number),
            )
        except TrainguardError as exc:
            self.refused[key] = budget.clip(str(exc), 500)
            self._skip(row, self.refused[key])
            return
        row.run_id = launched.run_id
        row.status = "queued" if launched.status == "queued" else "running"
        if self.state.parallel is None:
            self.state.parallel = self._default_parallel(row.run_id)

    def _default_parallel(self, run_id: str | None) -> int:
        """One trial per GPU slot when the trials train on GPUs; one at a time on a CPU (a
        trainer uses every core)."""
        if self.spec.parallel:
            return self.spec.parallel
        try:
            manifest = open_run(self.runs_root, run_id or "").read_manifest()
        except TrainguardError:
            return 1
        return slots.slot_count("gpu", len(manifest.gpus)) if manifest.resource == "gpu" else 1

    def _skip(self, row: TrialRow, reason: str) -> None:
        row.status, row.reason, row.finished_at = "skipped", reason, time.time()
        self.study.tell(row.number, state=TrialState.FAIL, skip_if_finished=True)

    def _watch(self, row: TrialRow) -> bool:
        """Report a live trial's new values, prune it or end it at its budget, and record its end.
        True if anything about it changed."""
        if row.run_id is None:
            return False
        try:
            run = open_run(self.runs_root, row.run_id)
            run_state = runs.refresh(run)
        except TrainguardError as exc:
            row.status, row.reason, row.finished_at = "failed", budget.clip(str(exc), 300), time.time()
            self.study.tell(row.number, state=TrialState.FAIL, skip_if_finished=True)
            return True
        changed = self._report(row, run)
        if run_state.status == "running" and row.status != "running":
            row.status, row.started_at, changed = "running", run_state.started_at, True
        if run_state.status in TERMINAL:
            self._report(row, run)
            self._conclude(row, run, run_state)
            return True
        if run_state.status != "running" or row.budget_reached:
            return changed
        if changed and row.pruned_at is None and self._should_prune(row):
            evidence = self._evidence(row)
            row.pruned_at, row.reason = row.last_at, evidence
            self._write()  # decided before it is acted on: a driver taking over stops it again
            runs.stop(
                row.run_id,
                run.read_manifest().watchdog.stop_grace_s,
                self.project,
                outcome="pruned",
                because=f"pruned by sweep {self.spec.sweep_id}: {evidence}",
            )
            return self._end_if_over(row, run)
        budget_s = self.spec.trial_budget_s
        if budget_s and run_state.started_at and time.time() - run_state.started_at > budget_s:
            row.budget_reached = True
            row.reason = f"trial budget of {budget_s:g} s reached at {row.at_unit} {row.last_at}"
            self._write()
            runs.stop(
                row.run_id,
                run.read_manifest().watchdog.stop_grace_s,
                self.project,
                because=f"the trial budget of sweep {self.spec.sweep_id} ({budget_s:g} s of training) ran out",
            )
            return self._end_if_over(row, run)
        return changed

    def _end_if_over(self, row: TrialRow, run: RunDir) -> bool:
        """After a stop: record the trial's end if its run has ended (else the next poll will)."""
        run_state = runs.refresh(run)
        if run_state.status in TERMINAL:
            self._report(row, run)
            self._conclude(row, run, run_state)
        return True

    def _report(self, row: TrialRow, run: RunDir) -> bool:
        points, unit = metric_points(run.path, self.spec.metric, row.last_at)
        if not points:
            return False
        row.at_unit = unit  # type: ignore[assignment]
        trial = self._trial(row)
        for at, value in points:
            if row.status in TRIAL_LIVE and row.number not in self.told:
                trial.report(value, at)
            row.last_at, row.last = at, value
            if row.best is None or (value > row.best if self.maximize else value < row.best):
                row.best, row.best_at = value, at
        return True

    def _should_prune(self, row: TrialRow) -> bool:
        if self.spec.prune.kind == "none":
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._trial(row).should_prune()

    def _evidence(self, row: TrialRow) -> str:
        """The pruner's reason in numbers: the trial against the trials it was judged by."""
        at, unit, metric = row.last_at, row.at_unit, self.spec.metric
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number != row.number]
        reported = [t.intermediate_values[at] for t in trials if at in t.intermediate_values]
        if self.spec.prune.kind == "median":
            done = [
                t.intermediate_values[at]
                for t in trials
                if t.state == TrialState.COMPLETE and at in t.intermediate_values
            ]
            ref = (
                f"median of {len(done)} completed trials at {unit} {at}: {statistics.median(done):.4g}" if done else ""
            )
            return f"{metric} {row.best:.4g} (its best by {unit} {at}); {ref}".rstrip("; ")
        factor = self.spec.prune.reduction_factor
        ranked = sorted([*reported, row.last if row.last is not None else math.nan], reverse=self.maximize)
        keep = max(1, len(ranked) // factor)
        return (
            f"{metric} {row.last:.4g} at {unit} {at}, not among the best 1/{factor} of the {len(ranked)} trials "
            f"that reached it (they reach {ranked[keep - 1]:.4g})"
        )

    def _conclude(self, row: TrialRow, run: RunDir, run_state: RunState) -> None:
        """Record an ended trial in the study and the table."""
        row.finished_at = run_state.finished_at or time.time()
        row.started_at = row.started_at or run_state.started_at
        status = run_state.status
        if status == "pruned":
            row.status = "pruned"
            row.pruned_at = row.pruned_at if row.pruned_at is not None else row.last_at
            row.reason = row.reason or run_state.stopped_because
            self.study.tell(row.number, state=TrialState.PRUNED, skip_if_finished=True)
        elif status == "succeeded" or (status == "stopped" and row.budget_reached):
            if row.best is None:
                row.status, row.reason = "failed", f"the run logged no finite {self.spec.metric}"
                self.study.tell(row.number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                row.status = "complete"
                self.study.tell(row.number, row.best, skip_if_finished=True)
        else:
            row.status = "stopped" if status == "stopped" else "failed"
            row.reason = row.reason or budget.clip(run_state.failure or run_state.stopped_because or status, 300)
            self.study.tell(row.number, state=TrialState.FAIL, skip_if_finished=True)
        if row.status == "complete":
            self._importance()

    def _stop_all(self, why: str) -> None:
        live = {row.number for row in self._live()}
        stop_live_trials(self.state, self.runs_root, self.project, why)
        for number in live:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    # -- results -----------------------------------------------------------------------------

    def _importance(self) -> None:
        complete = [t for t in self.state.trials if t.status == "complete"]
        varying = [k for k in self.spec.space if len({repr(t.params.get(k)) for t in complete}) > 1]
        if len(complete) < IMPORTANCE_MIN_TRIALS or not varying:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # PED-ANOVA (no scikit-learn, unlike fANOVA): how differently each parameter is
                # spread among the best trials than among all; the best third, at least 2 trials
                quantile = min(0.5, max(0.1, 2.0 / len(complete)))
                evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
                found = optuna.importance.get_param_importances(self.study, evaluator=evaluator, params=varying)
        except (ValueError, RuntimeError) as exc:
            log.warning("parameter importance not computed: %s", exc)
            return
        self.state.importance = {k: round(float(v), 3) for k, v in found.items()}

    def _scratchpad_end(self) -> None:
        rows = self.state.trials
        done = [r for r in rows if r.best is not None and r.status == "complete"]
        best = (max if self.maximize else min)(done, key=lambda r: r.best or 0.0) if done else None
        counts = ", ".join(
            f"{n} {s}"
            for s in ("complete", "pruned", "skipped", "failed", "stopped")
            if (n := sum(r.status == s for r in rows))
        )
        line = f"sweep {self.spec.sweep_id} {self.state.status}: {len(rows)} trials ({counts or 'none'})"
        if best is not None:
            params = ", ".join(f"{k}={v}" for k, v in best.params.items())
            line += (
                f"; best {self.spec.metric} {best.best:.4g} at {best.at_unit} {best.best_at} "
                f"(trial {best.number}, {best.run_id}: {params})"
            )
        if self.state.failure:
            line += f"; {self.state.failure}"
        try:
            scratchpad.append(self.project, self.spec.agent, budget.clip(line, 1500), kind="sweep")
        except (OSError, TrainguardError) as exc:
            log.warning("scratchpad not written: %s", exc)


def _trainer_param_types(spec: SweepSpec) -> dict[str, str]:
    from mcp_server import registry

    exp = registry.load_experiment(spec.experiment, Path(spec.project_dir))
    trainer = registry.load_trainer(exp.trainer, Path(spec.project_dir))
    return {name: p.type for name, p in trainer.params.items()}


def drive(folder: SweepDir) -> int:
    """Run the sweep in `folder` unless another driver does; returns the exit code."""
    lock = folder.take_lock()
    if lock is None:
        log.info("another driver runs sweep %s; this one exits", folder.sweep_id)
        return 0
    with lock:
        spec, state = folder.read_spec(), folder.read_state()
        if state.status in ("finished", "stopped", "failed"):
            return 0
        if state.driver_pid is not None:
            state.restarts += 1
        state.driver_pid, state.driver_started = os.getpid(), procs.start_time(os.getpid())
        state.status, state.started_at = "running", state.started_at or time.time()
        state.parallel = state.parallel or spec.parallel
        folder.write_state(state)
        try:
            Driver(folder, spec, state, open_study(folder, spec)).run()
        except Exception as exc:  # noqa: BLE001 - record the failure, stop the trials, then report it
            log.exception("sweep %s failed", folder.sweep_id)
            state.status, state.failure = (
                "failed",
                budget.clip(f"the sweep's driver failed: {type(exc).__name__}: {exc}", 500),
            )
            stop_live_trials(state, paths.runs_root(Path(spec.project_dir)), Path(spec.project_dir), state.failure)
            state.finished_at = time.time()
            folder.write_state(state)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mcp_server.sweeps.driver SWEEP_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return drive(SweepDir(Path(args[0]).resolve()))


if __name__ == "__main__":
    sys.exit(main())
