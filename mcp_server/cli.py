"""`trainguard`: the MCP server (`serve`) and the same operations for people at a terminal.

    trainguard train 1 [--set lr=5e-4 ...] [--detach]   pre-flight, launch, follow, summarise
        [--backend torchrun --resource nproc=2]          (or slurm: --resource partition=gpu ...)
    trainguard preflight 1 [--set ...]                   the checks alone
    trainguard memory 2 [--set batch_size=16] [--gpu-gib 16]  peak memory; the largest batch that fits
    trainguard prepare 2                                 create missing data (e.g. the image folder)
    trainguard runs | status RUN | stop RUN | plot RUN | gpu | experiments
    trainguard summary RUN|PATH | diagnose RUN | compare RUN RUN...|--experiment N | logs RUN | wait RUN | resume RUN
    trainguard watch [--seconds S] | scratchpad [--append TEXT] | dashboard [--port P] [--open] [--stop]
    trainguard sweep 1 [--space dim=64,128 --space lr=1e-4:1e-2:log] [--strategy tpe] [--detach]
    trainguard sweeps [SWEEP] | sweep-stop SWEEP | promote SWEEP [--top-k 2] [--set quick_search=false]
    trainguard serve [--project DIR]                     MCP over stdio (what the plugin starts)

Every command but `serve` takes --json for the same structured result the MCP tool returns.
Long waits show a live line on a terminal and stay quiet when piped.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from mcp_server import compare, gpu, paths, prepare, registry, runs, safefiles, scratchpad, textlog, trainer_env
from mcp_server.backends.model import Resources
from mcp_server.curves.stats import MetricStats, Point
from mcp_server.curves.summary import CurveSummary
from mcp_server.errors import InvalidInput, TrainguardError
from mcp_server.preflight import PreflightReport, estimate_memory, run_preflight
from mcp_server.rundir import RUN_ID_RE, TERMINAL, open_run

MARK = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL"}


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--set takes name=value, got {pair!r} (e.g. --set lr=5e-4).")
        out[key.strip()] = value.strip()
    return out


def _emit_json(model: BaseModel | list[BaseModel]) -> None:
    if isinstance(model, list):
        print("[" + ",\n".join(m.model_dump_json(indent=2) for m in model) + "]")
    else:
        print(model.model_dump_json(indent=2))


def _print_preflight(report: PreflightReport) -> None:
    print(f"Pre-flight for {report.experiment} ({report.title}), trainer {report.trainer}:")
    for c in report.checks:
        print(f"  [{MARK[c.verdict]}] {c.name}: {c.detail}")
        if c.fix and c.verdict != "pass":
            print(f"         fix: {c.fix}")
    print(report.summary)


def _print_summary(run_id: str) -> None:
    info, summ = runs.summary(run_id)
    print(f"\nRun {info.run_id}: {info.status}" + (f" ({info.failure})" if info.failure else ""))
    print(f"  {summ.headline}")
    _print_stats(summ)
    if info.status in ("failed", "lost"):
        run = open_run(paths.runs_root(), run_id)
        print("  stderr (last lines):\n    " + textlog.tail(run.stderr).replace("\n", "\n    "))


def _print_stats(summ: CurveSummary) -> None:
    for m in ([summ.primary] if summ.primary else []) + summ.metrics:
        print(f"  {_stats_line(m)}")
    for f in summ.findings:
        print(f"  [{f.severity}] {f.rule} on {f.metric} at step {f.step}: {f.evidence}\n         fix: {f.remedy}")
    if summ.omitted_metrics:
        print(f"  (also logged: {', '.join(summ.omitted_metrics)})")


def _follow(run_id: str) -> str:
    """Echo the trainer's stdout until the run ends; Ctrl-C stops the run cleanly."""
    run = open_run(paths.runs_root(), run_id)
    offset = 0
    try:
        while True:
            state = runs.refresh(run)
            if safefiles.is_regular(run.stdout):
                with safefiles.open_read(run.stdout, follow_links=False) as fh:
                    fh.seek(offset)
                    chunk = fh.read(4 * 2**20)
                # Print whole lines only; a partial line waits for its end.
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    sys.stdout.write(textlog.sanitize(chunk[:cut].decode("utf-8", errors="replace")))
                    sys.stdout.flush()
                    offset += cut
            if state.status in TERMINAL:
                return state.status
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping the run (it saves a checkpoint first)...", file=sys.stderr)
        return runs.stop(run_id).status


def cmd_train(args: argparse.Namespace) -> int:
    overrides = _parse_sets(args.set)
    resources = _resources(args.resource)
    if not args.json:
        report, _, _ = run_preflight(args.experiment, overrides, backend=args.backend, resources=resources)
        _print_preflight(report)
        if report.verdict == "fail":
            return 1
    result = runs.launch(
        args.experiment,
        overrides,
        note=args.note,
        acknowledge=args.acknowledge,
        dry_run=args.dry_run,
        backend=args.backend,
        resources=resources,
    )
    if args.json:
        _emit_json(result)
        if args.detach or args.dry_run:
            return 0
    else:
        if args.dry_run:
            print("Dry run, nothing started. Would run:\n  " + " ".join(result.argv))
            print(f"  in {result.run_dir}")
            return 0
        print(f"Launched {result.run_id} (pid {result.pid}); logs and metrics in {result.run_dir}")
        if args.detach:
            print(f"Detached. Follow with: trainguard status {result.run_id}")
            return 0
    assert result.run_id is not None
    final = _follow(result.run_id) if not args.json else _wait(result.run_id)
    if args.json:
        _emit_json(runs.status(result.run_id))
    else:
        _print_summary(result.run_id)
    return 0 if final == "succeeded" else 1


def _wait(run_id: str) -> str:
    return anyio.run(functools.partial(runs.wait, run_id, None, 0.5, stop_on_event=False)).run.status


def _resources(pairs: list[str]) -> dict[str, Any] | None:
    """--resource NAME=VALUE pairs: numbers and true/false as such, the rest as text."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for name, value in _parse_sets(pairs).items():
        kind = Resources.model_fields[name].annotation if name in Resources.model_fields else str
        out[name] = (
            value.lower() in ("true", "1", "yes")
            if kind is bool
            else int(value)
            if value.isdigit() and "int" in str(kind)
            else value
        )
    return out


def cmd_preflight(args: argparse.Namespace) -> int:
    report, _, _ = run_preflight(
        args.experiment, _parse_sets(args.set), backend=args.backend, resources=_resources(args.resource)
    )
    _emit_json(report) if args.json else _print_preflight(report)
    return 1 if report.verdict == "fail" else 0


def cmd_memory(args: argparse.Namespace) -> int:
    est = estimate_memory(args.experiment, _parse_sets(args.set), gpu_memory_gib=args.gpu_gib)
    if args.json:
        _emit_json(est)
        return 0
    print(f"Memory for {est.experiment} on {est.target} ({est.method} trace, {est.seconds:.1f} s):")
    print(f"  [{MARK[est.verdict]}] {est.detail}")
    if est.fix and est.verdict != "pass":
        print(f"         fix: {est.fix}")
    if est.note:
        print(f"  note: {est.note}")
    print(f"  {est.batch_param:>12}  {'need':>10}  fits")
    for row in est.table:
        fits = "?" if row.fits is None else ("yes" if row.fits else "no")
        print(f"  {row.batch_size:>12}  {row.need_bytes / 2**30:>6.2f} GiB  {fits}")
    return 1 if est.verdict == "fail" else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    result = prepare.prepare_data(args.experiment, _parse_sets(args.set))
    if args.json:
        _emit_json(result)
        return 0
    for p in result.paths:
        print(f"{p.param}: {p.action} {p.path}" + (f" in {p.seconds} s (log: {p.log})" if p.seconds else ""))
    print(result.summary)
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    rows = registry.list_experiments()  # every one, whole: a person's terminal has no answer budget
    if args.json:
        _emit_json(rows)
        return 0
    for exp in rows:
        if exp.error:
            print(f"{exp.id:<28} INVALID: {exp.error}")
        else:
            print(f"{exp.id:<28} {exp.trainer:<12} {exp.source:<8} {exp.title}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    page = runs.list_runs(limit=args.limit, offset=args.offset)
    if args.json:
        _emit_json(page)
        return 0
    if not page.runs:
        print(f"No runs in {page.runs_dir}." if not page.total else f"No runs from offset {page.offset}.")
    for r in page.runs:
        elapsed = f"{r.elapsed_s:.0f}s" if r.elapsed_s is not None else "-"
        print(f"{r.run_id:<44} {r.status:<10} {elapsed:>7}  {r.error or r.headline}")
    if page.next_offset is not None:
        print(f"({page.total - page.next_offset} more: trainguard runs --offset {page.next_offset})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = runs.status(args.run_id)
    if args.json:
        _emit_json(st)
        return 0
    print(f"{st.run_id}: {st.status}" + (f" ({st.failure})" if st.failure else ""))
    if st.epoch is not None:
        print(f"  epoch {st.epoch}/{st.epochs}")
    for name, value in st.latest.items():
        print(f"  {name:<14} {value}")
    print(f"  {st.headline}")
    if st.stderr_tail:
        print("  stderr:\n    " + st.stderr_tail.replace("\n", "\n    "))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    result = runs.stop(args.run_id, grace_s=args.grace)
    _emit_json(result) if args.json else print(f"{result.run_id}: {result.message}")
    return 0 if result.processes_left == 0 else 1


def _stats_line(m: MetricStats) -> str:
    def value(p: Point | None) -> str:
        return "-" if p is None or p.value is None else f"{p.value:.4g}"

    best = ""
    if m.best and m.best.epoch is not None:
        best = f", best {value(m.best)} at epoch {m.best.epoch:g}"
    elif m.best and m.best.step is not None:
        best = f", best {value(m.best)} at step {m.best.step:g}"
    bad = f", {m.nonfinite} non-finite from step {m.first_nonfinite_step:g}" if m.nonfinite else ""
    return f"{m.name:<16} {m.spark}  {value(m.first)} -> {value(m.last)}{best}{bad} ({m.count:,} points)"


def cmd_plot(args: argparse.Namespace) -> int:
    result = runs.plot_result(args.run_id, args.metric or None)
    _emit_json(result) if args.json else print(f"{result.path} ({', '.join(result.metrics)})")
    return 0


def _is_run(target: str) -> bool:
    return bool(RUN_ID_RE.fullmatch(target)) and (paths.runs_root() / target / "manifest.json").exists()


def cmd_summary(args: argparse.Namespace) -> int:
    is_run = _is_run(args.target)  # else a log folder or file of the user's own
    if args.json:
        _emit_json(runs.summarize_target(args.target if is_run else None, None if is_run else args.target, args.metric))
    elif is_run:
        _print_summary(args.target)
    else:
        summ = runs.summarize_path(args.target, args.metric)
        print(f"{args.target}: {summ.headline}")
        _print_stats(summ)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    d = runs.diagnose_run(args.run_id)
    if args.json:
        _emit_json(d)
        return 0
    print(f"{d.run_id}: {d.status}, {d.failure_class}: {d.summary}")
    for e in d.evidence:
        print(f"  [{e.source}] {e.text}")
    for r in d.remedies:
        print(f"  fix: {r}")
    if d.also:
        print(f"  also seen: {', '.join(d.also)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    c = compare.compare_runs(args.run_ids or None, args.metric, args.baseline, experiment=args.experiment)
    if args.json:
        _emit_json(c)
        return 0
    print(f"{c.metric} ({c.direction}), best first: {c.note}")
    for r in c.rows:
        best = "-" if r.best is None else f"{r.best:.4g}"
        where = f" at epoch {r.best_epoch:g}" if r.best_epoch is not None else ""
        vs = f"  ({r.vs_baseline:+.4g} vs baseline)" if r.vs_baseline is not None else ""
        differs = ", ".join(f"{k}={v}" for k, v in r.differs.items())
        print(f"  {r.run_id:<44} {r.status:<10} {best}{where}{vs}  {differs}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    out = runs.tail_log(args.run_id, args.stream, args.lines, args.pattern)
    if args.json:
        _emit_json(out)
        return 0
    for line in out.lines:
        print(line)
    if out.truncated:
        print(f"(earlier lines left out; {out.file_bytes:,} bytes in the {out.stream} log)", file=sys.stderr)
    return 0


class _Live:
    """One status line rewritten in place on a terminal; silent when stderr is not one."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.on:
            sys.stderr.write("\r\x1b[K" + text[:150])
            sys.stderr.flush()

    def done(self) -> None:
        if self.on:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def cmd_wait(args: argparse.Namespace) -> int:
    live = _Live()

    async def progress(st: runs.RunStatus, waited: float) -> None:
        epoch = f" epoch {st.epoch}/{st.epochs or '?'}" if st.epoch is not None else ""
        live.show(f"{st.run_id}: {st.status}{epoch}, {waited:.0f} s: {st.headline}")

    # Only the run's end (or the timeout) ends a person's wait; wait_run also returns on a watchdog event.
    st = anyio.run(functools.partial(runs.wait, args.run_id, args.timeout, 1.0, progress, stop_on_event=False)).run
    live.done()
    if args.json:
        _emit_json(st)
    else:
        print(f"{st.run_id}: {st.status}" + (f" ({st.failure})" if st.failure else "") + f": {st.headline}")
    return 0 if st.status == "succeeded" else 3 if st.status not in TERMINAL else 1


def cmd_resume(args: argparse.Namespace) -> int:
    result = runs.resume_run(
        args.run_id, _parse_sets(args.set), note=args.note, acknowledge=args.acknowledge, dry_run=args.dry_run
    )
    if args.json:
        _emit_json(result)
    elif args.dry_run:
        print("Dry run, nothing started. Would run:\n  " + " ".join(result.argv))
    else:
        print(
            f"Resumed {args.run_id} as {result.run_id} ({result.status}); follow with: trainguard wait {result.run_id}"
        )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    sampler = gpu.shared_sampler(paths.runs_root(paths.project_root()))
    live = _Live()

    async def progress(samples: int, elapsed: float) -> None:
        live.show(f"sampling the GPUs: {samples} samples, {elapsed:.0f}/{args.seconds:g} s")

    watch = anyio.run(gpu.watch, sampler, args.seconds, args.interval, progress)
    live.done()
    if args.json:
        _emit_json(watch)
    else:
        print(watch.model_dump_json(indent=2, exclude_none=True))
    return 0


def cmd_scratchpad(args: argparse.Namespace) -> int:
    project = paths.project_root()
    if args.append:
        appended = scratchpad.record(project, args.agent, args.append, kind=args.kind)
        _emit_json(appended) if args.json else print(f"appended to {appended.path}")
        return 0
    view = scratchpad.view(project, args.agent, args.coordinator, args.max_chars)
    if args.json:
        _emit_json(view)
        return 0
    for title, found in (
        ("coordinator", view.coordinator_latest),
        ("today", view.own_today),
        ("previous day", view.own_previous_day),
    ):
        if found:
            print(f"== {title}: {found.path}\n{found.text}")
    print(view.hint)
    return 0


def cmd_gpu(args: argparse.Namespace) -> int:
    report = gpu.shared_sampler(paths.runs_root(paths.project_root())).sample()
    if args.json:
        _emit_json(report)
        return 0
    print(report.note)
    for d in report.devices:
        mem = (
            f"{d.memory_used_bytes / 2**30:.1f}/{d.memory_total_bytes / 2**30:.1f} GiB"
            if d.memory_used_bytes is not None and d.memory_total_bytes is not None
            else "memory ?"
        )
        throttled = d.clocks.throttle_reasons if d.clocks and d.clocks.throttle_reasons else []
        print(
            f"  GPU {d.index} {d.name}: {mem}, util {d.utilization_percent}%, {d.temperature_c} C"
            + (f", {d.gfx}" if d.gfx else "")
            + (f", throttled: {', '.join(throttled)}" if throttled else "")
        )
        for p in d.processes:
            used = f"{p.used_memory_bytes / 2**30:.1f} GiB" if p.used_memory_bytes is not None else "memory ?"
            what = f"run {p.run_id}" if p.run_id else (p.command or p.name or "")
            print(f"    pid {p.pid} {p.user or ''} {used} {what}")
    for h in report.held:
        print(f"  held on GPU {h.gpu}: {h.why}. Fix: {h.fix}")
    h = report.host
    print(
        f"Host: {h.cpu_count} CPUs at {h.cpu_percent:.0f}%, load {h.load_avg_1m:.2f}, "
        f"RAM {h.ram_used_bytes / 2**30:.1f}/{h.ram_total_bytes / 2**30:.1f} GiB"
    )
    return 0


def cmd_install_torch(args: argparse.Namespace) -> int:
    if not args.json:
        print(f"Installing torch ({args.torch} build) for the trainers; this takes minutes...", file=sys.stderr)
    result = trainer_env.install_torch(args.torch, args.target)
    if args.json:
        _emit_json(result)
    else:
        print(f"torch {result.torch} in {result.python} ({result.target}, {result.seconds:.0f} s). {result.next_step}")
    return 0


def _parse_space(pairs: list[str]) -> dict[str, Any] | None:
    """--space dim=64,128,256 (a list) or --space lr=1e-4:1e-2:log (a range)."""
    space: dict[str, Any] = {}
    for name, text in _parse_sets(pairs).items():
        if ":" in text:
            parts = text.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise InvalidInput(f"--space {name}={text}: a range is LOW:HIGH or LOW:HIGH:log, e.g. 1e-4:1e-2:log.")
            try:
                space[name] = {"low": float(parts[0]), "high": float(parts[1]), "log": len(parts) == 3}
            except ValueError:
                raise InvalidInput(f"--space {name}={text}: LOW and HIGH must be numbers.") from None
        else:
            space[name] = [v.strip() for v in text.split(",") if v.strip()]
    return space or None


def _print_sweep(st: Any) -> None:
    print(
        f"Sweep {st.sweep_id} of {st.experiment}: {st.status}, {st.settings['strategy']}, "
        f"{sum(st.counts.values())}/{st.trials_total} trials ({', '.join(f'{n} {k}' for k, n in st.counts.items())})"
    )
    for line in st.table:
        params = ", ".join(f"{k}={v}" for k, v in line.params.items())
        best = f"{st.metric} {line.best:.4g} at {line.at}" if line.best is not None else "no value yet"
        extra = f"  ({line.reason})" if line.reason and line.status in ("pruned", "skipped", "failed") else ""
        print(f"  #{line.trial:<3} {line.status:<9} {best:<28} {params}{extra}")
    if st.best_config:
        print("Best config: " + ", ".join(f"{k}={v}" for k, v in st.best_config.items()))
    if st.importance:
        print("Importance: " + ", ".join(f"{k} {v:.2f}" for k, v in st.importance.items()))
    if st.failure:
        print(f"Failure: {st.failure}")
    print(st.next_step)


def cmd_sweep(args: argparse.Namespace) -> int:
    from mcp_server.sweeps import api as sweeps

    launched = sweeps.launch_sweep(
        args.experiment,
        space=_parse_space(args.space),
        strategy=args.strategy,
        max_trials=args.trials,
        parallel=args.parallel,
        prune=args.prune,
        trial_budget_s=args.trial_budget,
        overrides=_parse_sets(args.set) or None,
        acknowledge=args.acknowledge or None,
        note=args.note,
    )
    if args.json and args.detach:
        _emit_json(launched)
        return 0
    if not args.json:
        print(f"Launched sweep {launched.sweep_id}: {launched.settings}")
    if args.detach:
        print(f"It runs by itself; see it with: trainguard sweeps {launched.sweep_id}")
        return 0
    live = _Live()
    while True:
        st = sweeps.sweep_status(launched.sweep_id)
        live.show(f"{st.status}: {sum(st.counts.values())}/{st.trials_total} trials {st.counts}")
        if st.status in ("finished", "stopped", "failed"):
            break
        time.sleep(2.0)
    live.done()
    _emit_json(st) if args.json else _print_sweep(st)
    return 0 if st.status == "finished" else 1


def cmd_sweeps(args: argparse.Namespace) -> int:
    from mcp_server.sweeps import api as sweeps

    st = sweeps.sweep_status(args.sweep_id, args.experiment, args.limit)
    if args.json:
        _emit_json(st)
        return 0
    _print_sweep(st)
    for other in st.other_sweeps:
        print(f"  also: {other['sweep_id']} ({other['status']})")
    return 0


def cmd_sweep_stop(args: argparse.Namespace) -> int:
    from mcp_server.sweeps import api as sweeps

    result = sweeps.stop_sweep(args.sweep_id)
    _emit_json(result) if args.json else print(result.message)
    return 0 if result.processes_left == 0 else 1


def cmd_promote(args: argparse.Namespace) -> int:
    from mcp_server.sweeps import api as sweeps

    result = sweeps.promote_sweep(
        args.sweep_id,
        args.top_k,
        _parse_sets(args.set) or None,
        note=args.note,
        acknowledge=args.acknowledge or None,
        dry_run=args.dry_run,
    )
    if args.json:
        _emit_json(result)
        return 0
    for item in result.launched:
        print(f"trial {item['trial']} ({item['trial_best']:.4g}) -> {item['run_id'] or 'dry run'} {item['status']}")
    print(result.next_step)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from mcp_server.dashboard import serve as dashboard

    if args.stop:
        stopped = dashboard.close()
        print("the dashboard stopped." if stopped else "no dashboard runs for this project.")
        return 0
    info = dashboard.open_dashboard(port=args.port)
    if args.json:
        _emit_json(info)
    else:
        print(f"{'Dashboard running' if info.reused else 'Dashboard started'} (pid {info.pid}): {info.url}")
    if args.open:
        import webbrowser

        webbrowser.open(info.url)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.project is not None:
        if not args.project.is_dir():
            print(
                f"trainguard serve: --project {args.project} is not a folder; pass your project's folder.",
                file=sys.stderr,
            )
            return 2
        os.environ["TRAINGUARD_PROJECT_DIR"] = str(args.project.resolve())
    from mcp_server.server import serve  # the MCP SDK is only imported to serve

    serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainguard", description="Guarded ML training for coding agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        if name != "serve":
            p.add_argument("--json", action="store_true", help="print the structured result as JSON")
        return p

    add("serve", cmd_serve, "serve MCP over stdio (what the Claude Code plugin starts)").add_argument(
        "--project", type=Path, help="the project folder (default: $CLAUDE_PROJECT_DIR, else the working directory)"
    )
    for name, fn, help_ in (
        ("train", cmd_train, "pre-flight, launch and follow an experiment"),
        ("preflight", cmd_preflight, "run the pre-flight checks only"),
        ("memory", cmd_memory, "estimate peak memory and the largest batch that fits"),
        ("prepare", cmd_prepare, "create the data an experiment needs, if missing"),
    ):
        p = add(name, fn, help_)
        p.add_argument("experiment", help="N, NNN or NNN-slug")
        p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
        if name in ("train", "preflight"):
            p.add_argument(
                "--backend",
                choices=("local", "torchrun", "slurm"),
                help="where it runs (default: the experiment's [run] table)",
            )
            p.add_argument(
                "--resource",
                action="append",
                default=[],
                metavar="NAME=VALUE",
                help="a resource: nproc=2, partition=gpu, time=4:00:00, gpus=4, requeue=true ...",
            )
        if name == "memory":
            p.add_argument("--gpu-gib", type=float, help="plan for a GPU with this much free memory (e.g. 16)")
        if name == "train":
            p.add_argument("--note", default="", help="why you launch it (goes to the scratchpad)")
            p.add_argument(
                "--acknowledge",
                action="append",
                default=[],
                metavar="RULE_ID",
                help="run despite this danger rule (pre-flight names the ones that fire)",
            )
            p.add_argument("--detach", action="store_true", help="return after launching; the run goes on")
            p.add_argument("--dry-run", action="store_true", help="show the command without starting it")
    add("experiments", cmd_experiments, "list experiments")
    p = add("runs", cmd_runs, "list recent runs")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0, help="skip this many of the newest runs")
    add("status", cmd_status, "status of a run").add_argument("run_id")
    p = add("stop", cmd_stop, "stop a run (checkpoint, then kill its process group)")
    p.add_argument("run_id")
    p.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    p = add("summary", cmd_summary, "summarise a run's metrics, or a log folder or file of your own")
    p.add_argument("target", metavar="RUN|PATH")
    p.add_argument("--metric", help="the metric to centre on (default: the run's primary)")
    add("diagnose", cmd_diagnose, "why a run failed, with the lines that show it and the remedies").add_argument(
        "run_id"
    )
    p = add("compare", cmd_compare, "several runs on one metric, best first, with what differs")
    p.add_argument("run_ids", nargs="*", metavar="RUN")
    p.add_argument("--experiment", help="instead of RUNs: that experiment's newest finished runs, e.g. 001")
    p.add_argument("--metric")
    p.add_argument("--baseline", help="a run id or a figure, e.g. 20.47")
    p = add("logs", cmd_logs, "the end of a run's log, optionally filtered (RE2 pattern)")
    p.add_argument("run_id")
    p.add_argument("--stream", default="stderr", choices=runs.LOG_STREAMS)
    p.add_argument("--lines", type=int, default=50)
    p.add_argument("--pattern")
    p = add("wait", cmd_wait, "wait for a run to end (exit 0 succeeded, 1 ended otherwise, 3 still going)")
    p.add_argument("run_id")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    p = add("resume", cmd_resume, "continue a run from its last checkpoint as a new run")
    p.add_argument("run_id")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a parameter")
    p.add_argument("--note", default="")
    p.add_argument("--acknowledge", action="append", default=[], metavar="RULE_ID")
    p.add_argument("--dry-run", action="store_true")
    p = add("watch", cmd_watch, "sample the GPUs for a while: min / mean / max per GPU and each run's memory")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=1.0)
    p = add("scratchpad", cmd_scratchpad, "read the scratchpad (seed 002), or append an entry to it")
    p.add_argument("--append", metavar="TEXT")
    p.add_argument("--kind", default="note")
    p.add_argument("--agent", default="training-runner")
    p.add_argument("--coordinator", default="coordinator")
    p.add_argument("--max-chars", type=int, default=4000)
    p = add("plot", cmd_plot, "draw a run's curves to <run dir>/plot.png")
    p.add_argument("run_id")
    p.add_argument("--metric", action="append", help="a metric to draw (repeat for more); default: primary and losses")
    p = add("sweep", cmd_sweep, "search an experiment's parameters: every trial a guarded run, losers pruned")
    p.add_argument("experiment", help="N, NNN or NNN-slug (its sweep.toml gives the defaults)")
    p.add_argument("--space", action="append", default=[], metavar="NAME=V1,V2|LOW:HIGH[:log]")
    p.add_argument("--strategy", choices=("grid", "random", "tpe"))
    p.add_argument("--trials", type=int, help="at most this many trials (a grid: its size)")
    p.add_argument("--parallel", type=int, help="trials at once (default: one per GPU, one on a CPU)")
    p.add_argument("--prune", choices=("none", "median", "asha"))
    p.add_argument("--trial-budget", type=float, metavar="SECONDS", help="training time per trial at most")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="fixed for every trial")
    p.add_argument("--acknowledge", action="append", default=[], metavar="RULE_ID")
    p.add_argument("--note", default="")
    p.add_argument("--detach", action="store_true", help="return after launching; the sweep goes on")
    p = add("sweeps", cmd_sweeps, "a sweep's table, best first (default: the newest sweep)")
    p.add_argument("sweep_id", nargs="?")
    p.add_argument("--experiment", help="that experiment's newest sweep")
    p.add_argument("--limit", type=int, default=20)
    add("sweep-stop", cmd_sweep_stop, "stop a sweep and its running trials").add_argument("sweep_id")
    p = add("promote", cmd_promote, "run a sweep's best configurations in full (quick search, then full)")
    p.add_argument("sweep_id")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="e.g. quick_search=false")
    p.add_argument("--note", default="")
    p.add_argument("--acknowledge", action="append", default=[], metavar="RULE_ID")
    p.add_argument("--dry-run", action="store_true")
    p = add("dashboard", cmd_dashboard, "the live dashboard in a browser: runs, curves, GPUs, stop/resume")
    p.add_argument("--port", type=int, help="listen on this port (default: a free one)")
    p.add_argument("--open", action="store_true", help="open it in the browser")
    p.add_argument("--stop", action="store_true", help="stop this project's dashboard")
    add("gpu", cmd_gpu, "GPUs and host status")
    p = add("install-torch", cmd_install_torch, "install torch for the trainers (minutes; GBs for a GPU build)")
    p.add_argument("--torch", default="cpu", choices=["cpu", "cuda", "rocm"], help="which build (default cpu)")
    p.add_argument(
        "--target",
        default="auto",
        choices=["auto", "plugin", "project"],
        help="auto: trainguard's own environment unless the project has a .venv (then say so)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except TrainguardError as exc:
        print(f"trainguard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
