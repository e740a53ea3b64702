"""The MCP server: a thin registry of tools over the plain modules of this package.

Each tool knows no paths and holds no loop: it calls one function of the module that does the
work (the CLI calls the same ones), and turns a `TrainguardError` into a `ToolError` whose
message tells the calling model what to do. Limits and enums live in the tools' schemas
(`Annotated[..., Field(...)]`, `Literal`), so a client sees them in list_tools, and a value out
of range is refused with the range (`_argument_error`), never clamped. Nothing here writes to
stdout (the MCP wire) or imports torch (start-up must stay fast).
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from mcp_server import (
    __version__,
    budget,
    diagnose,
    gpu,
    handoff,
    memory,
    paths,
    prepare,
    registry,
    runs,
    scratchpad,
    textlog,
    trainer_env,
)
from mcp_server.backends.model import BackendName
from mcp_server.compare import MAX_RUNS, Comparison
from mcp_server.compare import compare_runs as _compare_runs
from mcp_server.dashboard import serve as dashboard
from mcp_server.errors import TrainguardError
from mcp_server.gpu.sampling import INTERVAL_S, WATCH_S
from mcp_server.preflight import PreflightReport, run_preflight
from mcp_server.preflight import estimate_memory as _estimate_memory
from mcp_server.specs import Scalar
from mcp_server.sweeps import api as sweeps
from mcp_server.sweeps import spec as sweep_spec

log = logging.getLogger("trainguard.server")
F = TypeVar("F", bound=Callable[..., Any])

INSTRUCTIONS = """trainguard runs ML training safely on this machine. Typical flow for experiment N:
preflight(N) -> fix any 'fail' -> launch_run(N) -> run_status(run_id) every few minutes ->
summarize_run(run_id) when it ends. Never read raw training logs: summarize_run and run_status
are bounded. Log what you launch and learn with scratchpad_append; read scratchpad_read first."""


def _bounds(schema: dict[str, Any]) -> str:
    """The range a parameter's schema allows, as the error states it: "1 to 100", "more than 0
    and at most 3600", or its choices."""
    for option in [schema, *schema.get("anyOf", [])]:
        if "enum" in option:
            return f"one of {option['enum']}"
        lo, lo_open = option.get("minimum", option.get("exclusiveMinimum")), "exclusiveMinimum" in option
        hi, hi_open = option.get("maximum", option.get("exclusiveMaximum")), "exclusiveMaximum" in option
        if lo is not None and hi is not None and not lo_open and not hi_open:
            return f"{lo:g} to {hi:g}"
        parts = ([f"{'more than' if lo_open else 'at least'} {lo:g}"] if lo is not None else []) + (
            [f"{'less than' if hi_open else 'at most'} {hi:g}"] if hi is not None else []
        )
        if parts:
            return " and ".join(parts)
    return ""


def _argument_error(name: str, exc: ValidationError, schema: dict[str, Any]) -> ToolError:
    """What a client reads when its arguments fail the tool's schema: each wrong argument, the
    value given and the range or choices the schema allows (the SDK's own text is pydantic's
    report under "Error executing tool ..."; this one says what to pass instead)."""
    props = schema.get("properties", {})
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        given = budget.clip(repr(err.get("input")), 80)
        allowed = _bounds(props.get(str(err["loc"][0]), {})) if err["loc"] else ""
        if err["type"] == "missing":
            parts.append(f"{where} is required")
        elif err["type"] in ("literal_error", "enum"):
            parts.append(f"{where} {given} is not {allowed or 'an allowed value'}")
        elif allowed and err["type"] in (
            "greater_than",
            "greater_than_equal",
            "less_than",
            "less_than_equal",
            "finite_number",
        ):
            parts.append(f"{where} is {given}; pass {allowed}")
        else:
            parts.append(f"{where} is {given}: {err['msg']}" + (f" (pass {allowed})" if allowed else ""))
    more = f" ({len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return ToolError(f"{name}: " + "; ".join(parts) + more + ". list_tools has every parameter's range.")


class _Server(MCPServer):
    """The SDK's server, with argument errors that state the allowed range (`_argument_error`)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            schemas = {t.name: t.input_schema for t in await self.list_tools()}
            raise _argument_error(name, exc.__cause__, schemas.get(name, {})) from exc.__cause__


mcp = _Server(name="trainguard", version=__version__, instructions=INSTRUCTIONS)

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
# Changes no file, but runs project code (the experiment's interpreter, its data decoders, its memory step).
RUNS_CODE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


def _answer(result: Any) -> Any:
    """A model as the answer the client gets: compact JSON text (no indentation, no nulls: the
    budget is counted in characters) beside the structured content, both within the budget
    (`budget.fit` cuts, and says what it cut, if a tool's own bounds were not enough)."""
    if isinstance(result, CallToolResult) or not isinstance(result, BaseModel):
        return result  # built by the tool itself (plot_run's image)
    text, cuts = budget.fit(
        result.model_dump(mode="json", by_alias=True, exclude_none=True), limit=budget.ANSWER_CHARS - 400
    )  # room for the note of what was cut
    if cuts:
        log.warning(
            "%s: answer cut to fit the budget (%d cuts): %s", type(result).__name__, len(cuts), "; ".join(cuts[:4])
        )
        text = {**text, "cut": [budget.clip(c, 90) for c in cuts[:4]]} if isinstance(text, dict) else text
    structured, _ = budget.fit(result.model_dump(mode="json", by_alias=True), limit=2 * budget.ANSWER_CHARS)
    return CallToolResult(
        content=[TextContent(type="text", text=orjson.dumps(text).decode())], structured_content=structured
    )


def _tool_error(name: str, exc: BaseException) -> ToolError:
    """The error the model reads: a TrainguardError's own message, else what failed and where to look."""
    if isinstance(exc, TrainguardError):
        return ToolError(str(exc))
    log.exception("tool %s failed", name)
    return ToolError(
        f"{name} failed unexpectedly ({type(exc).__name__}: {str(exc)[:300]}). This is a trainguard bug; "
        "the server's log (stderr) has the traceback. Try the call again, or the CLI's same command."
    )


def tool(annotations: ToolAnnotations) -> Callable[[F], F]:
    """Register a function as a tool. Its `TrainguardError`s reach the model as `ToolError`s with
    their message; anything else as a `ToolError` that names it (never a bare "Error executing
    tool"); a returned model as compact JSON."""

    def register(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return _answer(await fn(*args, **kwargs))
                except Exception as exc:  # noqa: BLE001 - the top level: every failure becomes a ToolError
                    raise _tool_error(fn.__name__, exc) from exc
        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return _answer(fn(*args, **kwargs))
                except Exception as exc:  # noqa: BLE001 - the top level: every failure becomes a ToolError
                    raise _tool_error(fn.__name__, exc) from exc

        mcp.add_tool(wrapper, annotations=annotations)
        return fn

    return register


Limit = Annotated[
    int,
    Field(
        ge=1, le=100, description="rows on this page at most (a page may stop early to stay within the answer budget)"
    ),
]
Offset = Annotated[int, Field(ge=0, description="rows to skip: pass the previous page's next_offset")]
RunId = Annotated[str, Field(description="a run id, as list_runs shows it")]
Agent = Annotated[str, Field(description="a scratchpad name: lower-case letters, digits, '-' or '_'")]


@tool(READ_ONLY)
def list_experiments(limit: Limit = 50, offset: Offset = 0) -> registry.ExperimentPage:
    """List the experiments `/train N` can run: the project's `experiments/NNN-slug/` first, then
    the bundled examples. Each has a title, its trainer and its arguments; a broken one is listed
    with the error that says how to fix it. Pages: `total`, and `next_offset` to pass as `offset`
    for the next page. Cheap; call it when the user names no experiment."""
    return registry.experiment_page(limit=limit, offset=offset)


@tool(RUNS_CODE)
def preflight(
    experiment: str | int,
    overrides: dict[str, Scalar] | None = None,
    backend: BackendName | None = None,
    resources: dict[str, Any] | None = None,
) -> PreflightReport:
    """Check an experiment before launching it, changing no file. `experiment` is N, NNN or
    NNN-slug; `overrides` maps parameter names to values (e.g. {"lr": 0.0005}). Returns each check
    (experiment, parameters, interpreter, torch, device, data, output, gpu) as pass/warn/fail with
    a fix, the resolved config and a one-line summary. Runs project code: the experiment's
    interpreter (only a venv's bin/python) imports torch, decodes a data sample and traces the
    trainer's memory step, in subprocesses. Takes a few seconds. A bad experiment or parameter
    raises an error that says what to pass instead. `backend` and `resources` check it where it
    would run (default: the experiment's [run] table), e.g. backend="torchrun", resources={"nproc": 2}."""
    report, _, _ = run_preflight(str(experiment), overrides, backend=backend, resources=resources)
    return report


@tool(RUNS_CODE)
def estimate_memory(
    experiment: str | int, overrides: dict[str, Scalar] | None = None, gpu_memory_gib: float | None = None
) -> memory.MemoryEstimate:
    """Estimate an experiment's peak memory before launching it: one training step is traced
    under PyTorch's fake tensors (nothing is computed or allocated) at two batch sizes, then the
    device context and an allocator margin are added. Returns the need at the configured batch
    size, what the GPU (or, for CPU training, the host) has free, the largest batch size that
    fits, and a small table of batch sizes. Use it before raising batch size, image size or model
    size. `gpu_memory_gib` plans for a card that is not here (e.g. 16 for an RX 7800 XT, 80 for
    a cluster's H100). Runs project code: the trainer's memory step (a file inside the project)
    in the experiment's interpreter. Takes a few seconds. preflight runs the same estimate as its
    `memory` check."""
    return _estimate_memory(str(experiment), overrides, gpu_memory_gib=gpu_memory_gib)


@tool(WRITES)
async def prepare_data(experiment: str | int, overrides: dict[str, Scalar] | None = None) -> prepare.PrepareResult:
    """Create the data an experiment needs when pre-flight reports a data path missing and offers
    this tool as the fix (e.g. the image folder built from real photographs). Runs the trainer
    spec's own preparation command (project code, with the experiment's interpreter) in its own
    process group; cancelling the call
    stops it, and a second call for the same path while one runs is refused. Never touches data
    that exists. Can take minutes."""
    return await prepare.prepare_data_async(str(experiment), overrides)


@tool(WRITES)
async def install_torch(
    build: Literal["cpu", "cuda", "rocm"] = "cpu", target: Literal["auto", "plugin", "project"] = "auto"
) -> trainer_env.TorchInstall:
    """Install torch for the trainers when pre-flight's torch check fails because nothing has it (a
    fresh install). ASK THE USER FIRST: it takes minutes and, for a GPU build, gigabytes. `build`:
    cpu (default), cuda (NVIDIA) or rocm (AMD). `target`: auto makes trainguard's own trainers
    environment in the plugin's data folder, and refuses when the project has its own .venv
    (never changed unasked); project installs into that .venv; plugin forces the own one. The
    trainers then run with it; run preflight again."""
    return await trainer_env.install_torch_async(build, target)


@tool(WRITES)
def launch_run(
    experiment: str | int,
    overrides: dict[str, Scalar] | None = None,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    backend: BackendName | None = None,
    resources: dict[str, Any] | None = None,
) -> runs.LaunchResult:
    """Start a training run of an experiment in the background and return its `run_id` at once.
    Re-runs pre-flight first and refuses if any check fails. The trainer runs as a supervised
    subprocess (own process group, stdin closed, logs and metrics in runs/<run_id>/) that survives
    this session. `note` says why you launch it; `agent` names the scratchpad that gets the launch
    and finish entries. If pre-flight reports danger rules (`danger_fired`), the launch is refused
    unless `acknowledge` lists each rule id: tell the user first. `dry_run=True` returns the exact
    argv, env and run folder without starting anything. `backend`: local (one process), torchrun
    (several on this node, DDP) or slurm (sbatch to the cluster this machine is a client of);
    `resources`: {"nproc": N} processes per node, each on its own GPU (or CPU slot), and for
    Slurm partition, account, qos, time, gpus, cpus_per_task, mem, constraint, nodes, requeue,
    extra; `batch_size` stays the global batch. Default: the experiment's [run] table. Then
    poll run_status; never tail logs."""
    return runs.launch(
        str(experiment),
        overrides,
        note=note,
        agent=agent,
        acknowledge=acknowledge,
        dry_run=dry_run,
        backend=backend,
        resources=resources,
    )


@tool(READ_ONLY)
def list_runs(limit: Limit = 20, offset: Offset = 0) -> runs.RunPage:
    """List runs, newest first: id, experiment, status (queued with its position, running,
    succeeded, failed, stopped, pruned by its sweep, lost; a damaged folder with its error),
    elapsed time, exit code, a one-line headline of the primary metric, and the sweep and trial
    of a sweep's run. Pages: `total` runs in all, and `next_offset` to pass as `offset` for the
    next page (a page stops early to stay short). Cheap."""
    return runs.list_runs(limit=limit, offset=offset)


@tool(READ_ONLY)
def run_status(run_id: RunId) -> runs.RunStatus:
    """Status of one run: status, epoch of epochs, the latest value of each metric, checkpoints
    written, and, if it failed, the last lines of its stderr (bounded, cleaned). Cheap; poll it
    every few minutes while a run trains, instead of reading logs."""
    return runs.status(run_id)


@tool(DESTRUCTIVE)
def stop_run(
    run_id: RunId,
    grace_seconds: Annotated[
        float, Field(ge=0, le=runs.MAX_GRACE_S, description="seconds between SIGTERM and SIGKILL")
    ] = 30.0,
) -> runs.StopResult:
    """Stop a running run: SIGTERM to its process group (the trainer saves a checkpoint and exits),
    then SIGKILL to whatever is left after `grace_seconds`. Returns when no process of the run is
    left. Stopping a run that already ended changes nothing."""
    return runs.stop(run_id, grace_s=grace_seconds)


@tool(READ_ONLY)
def summarize_run(
    run_id: str | None = None, path: str | None = None, primary_metric: str | None = None
) -> runs.RunSummaryResult:
    """Summarise a run's curves in at most ~1,500 tokens, however long it ran, from whatever it
    writes (our metrics stream, TensorBoard events, CSV, history.json, trainer_state.json or
    'Epoch N - Loss: x' lines). Per metric: first, last, best (step, epoch), tail median,
    log-scale slope, throughput, and sparklines that keep spikes. `findings` lists diagnoses with
    step, evidence and remedy: non-finite values, spikes, divergence, plateau, overfitting,
    underfitting, accuracy at chance, learning rate too high or too low, no progress; remedies
    use the trainer spec's own flags where it gives them. Give `run_id`, or `path`
    (a folder or log file inside the project, e.g. a run of your own outside trainguard).
    Repeated calls on a growing run read only the new bytes. Use this, never the raw logs."""
    return runs.summarize_target(run_id, path, primary_metric)


@tool(READ_ONLY)
def compare_runs(
    run_ids: Annotated[list[str], Field(min_length=2, max_length=MAX_RUNS)] | None = None,
    metric: str | None = None,
    baseline: str | None = None,
    experiment: str | int | None = None,
) -> Comparison:
    """Compare 2-20 runs on one metric (default: the first run's primary metric): a table, best
    first, with each run's best (and its step/epoch), last value, and the hyperparameters that
    differ between the runs. Pass `run_ids`, or `experiment` (e.g. '001') for that experiment's
    newest 20 finished runs (its results.md lists them all). `baseline` is one of the run ids or
    a number (e.g. 20.47 for a published figure): each row then says how far it is from it."""
    return _compare_runs(run_ids, metric, baseline, experiment=None if experiment is None else str(experiment))


@tool(WRITES)
def plot_run(run_id: RunId, metrics: list[str] | None = None) -> Annotated[CallToolResult, runs.PlotResult]:
    """A PNG of a run's curves (up to 4 panels; train and val of one metric share a panel; long
    runs drawn as min/max envelopes so spikes survive; NaN onsets marked), returned as an image
    and saved in the run's folder as plot.png. `metrics` defaults to the primary metric and the
    losses. Costs an image's tokens: prefer summarize_run unless a picture is needed."""
    result = runs.plot_result(run_id, metrics)
    with open(result.path, "rb") as fh:
        png = fh.read()
    return CallToolResult(
        content=[
            TextContent(type="text", text=f"{run_id}: {', '.join(result.metrics)}; saved to {result.path}"),
            ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
        ],
        structured_content=result.model_dump(),
    )


@tool(WRITES)
def resume_run(
    run_id: RunId,
    overrides: dict[str, Scalar] | None = None,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
    backend: BackendName | None = None,
    resources: dict[str, Any] | None = None,
) -> runs.LaunchResult:
    """Continue a stopped, failed or lost run from its last checkpoint: a new run of the same
    experiment with the same overrides (plus `overrides`, e.g. {"epochs": 100}) and the
    checkpoint as its `resume` parameter, after the same pre-flight. The danger rules the first
    run acknowledged stay acknowledged. Returns the new run's id; the old run stays as it was."""
    return runs.resume_run(run_id, overrides, note=note, agent=agent, acknowledge=acknowledge, dry_run=dry_run)


@tool(READ_ONLY)
def diagnose_run(run_id: RunId) -> diagnose.Diagnosis:
    """Why a run failed (or ended, or looks unhealthy): the failure class (gpu_out_of_memory,
    hip_missing_override, hip_error, device_mismatch, wrong_dtype, nonfinite_loss, import_error,
    missing_file, disk_full, host_out_of_memory, killed_by_kernel_oom, stalled, timeout, user_stop, crash,
    or none), the few log lines or facts that show it, and the remedies to try. Reads stderr,
    stdout, the exit code and signal, and the metrics; never returns a whole log."""
    return runs.diagnose_run(run_id)


@tool(READ_ONLY)
def tail_log(
    run_id: RunId,
    stream: runs.LogStream = "stderr",
    lines: Annotated[int, Field(ge=1, le=textlog.MAX_LINES)] = 50,
    pattern: Annotated[str | None, Field(description="RE2 syntax: no backreferences or lookaround")] = None,
) -> textlog.LogTail:
    """The last `lines` (1-500) lines of a run's log: stream is stderr, stdout, metrics or
    supervisor. `pattern` (a regular expression in RE2 syntax: no backreferences or lookaround)
    keeps only matching lines, searched in the last 8 MiB. At most ~4,500 characters (the newest
    lines win; `truncated` says when some were left out), lines over 500 characters cut, control
    characters removed. Prefer diagnose_run and summarize_run; use this for the exact text
    around an error."""
    return runs.tail_log(run_id, stream, lines, pattern)


@tool(READ_ONLY)
async def wait_run(
    run_id: RunId,
    ctx: Context,
    timeout_seconds: Annotated[float, Field(gt=0, le=runs.MAX_WAIT_S)] = 300.0,
    poll_seconds: Annotated[float, Field(ge=runs.POLL_S[0], le=runs.POLL_S[1])] = 2.0,
) -> runs.WaitResult:
    """Wait for a run to finish, for a watchdog event, or for `timeout_seconds` (at most 3600),
    whichever comes first, sending MCP progress notifications (epoch of epochs, headline) while
    it waits. Returns the run's status. Cheaper for your context than polling run_status."""

    async def progress(st: runs.RunStatus, waited: float) -> None:
        await ctx.report_progress(st.epoch or 0, st.epochs, f"{st.status}: {st.headline}"[:200])

    return await runs.wait(run_id, timeout_seconds, poll_seconds, progress)


@tool(READ_ONLY)
def gpu_status() -> gpu.GpuReport:
    """Snapshot of every GPU (NVIDIA or AMD: name, UUID/PCI id, memory used/total, utilisation,
    temperature, power and its limit, clocks and throttle reasons, ECC, MIG slices, AMD gfx id;
    processes with user and command line) and the host's CPU, load and RAM. Says plainly when
    there is no GPU. Unknown figures are null with the reason in `unavailable`, never 0. A process
    of one of our runs carries its `run_id`; memory held by a vanished process or by one of our
    finished runs is listed in `held` with the fix. Cheap (about 1 ms warm)."""
    return gpu.shared_sampler(paths.runs_root(paths.project_root())).sample()


@tool(READ_ONLY)
async def gpu_watch(
    ctx: Context,
    seconds: Annotated[float, Field(gt=0, le=WATCH_S)] = 10.0,
    interval: Annotated[float, Field(ge=INTERVAL_S[0], le=INTERVAL_S[1])] = 1.0,
) -> gpu.GpuWatch:
    """Sample the GPUs every `interval` seconds (0.2-60) for `seconds` (at most 300) and return
    min / mean / max of memory, utilisation, temperature and power per GPU, and the GPU memory
    of each of our runs: `nvidia-smi -l 1` in a few hundred tokens. Reports progress while it
    samples. Use it to see whether a run keeps the GPU busy or creeps towards its memory limit."""

    async def progress(samples: int, elapsed: float) -> None:
        await ctx.report_progress(elapsed, seconds, f"{samples} samples")

    return await gpu.watch(gpu.shared_sampler(paths.runs_root(paths.project_root())), seconds, interval, progress)


@tool(READ_ONLY)
def scratchpad_read(
    agent: Agent = "training-runner",
    coordinator: Agent = "coordinator",
    max_chars: Annotated[int, Field(ge=scratchpad.VIEW_CHARS[0], le=scratchpad.VIEW_CHARS[1])] = 4000,
) -> scratchpad.ScratchpadView:
    """Read the scratchpad before starting work (seed 002's protocol): the coordinator's latest day
    (what to train), and your own today's and previous day's files (runs you launched earlier).
    Files live in .claude/scratchpad/<agent>/YYYY-MM-DD.md; `max_chars` is shared between the
    files found, each trimmed to its end (the newest entries)."""
    return scratchpad.view(paths.project_root(), agent, coordinator, max_chars)


@tool(WRITES)
def scratchpad_append(
    text: Annotated[str, Field(description=f"the entry, under {scratchpad.MAX_ENTRY_CHARS:,} characters")],
    agent: Agent = "training-runner",
    kind: Annotated[
        str, Field(description="one short lower-case word: note, gpu, loss, error, observation, summary")
    ] = "note",
) -> scratchpad.AppendResult:
    """Append a timestamped entry to today's scratchpad of `agent`. Log launches, GPU figures, loss
    summaries, errors and cross-agent observations; end your work with a 2-3 line entry of
    kind 'summary'. `kind` is one short word (note, gpu, loss, error, observation, summary). Keep
    entries short (under 4,000 characters): summaries, never pasted logs."""
    return scratchpad.record(paths.project_root(), agent, text, kind=kind)


@tool(READ_ONLY)
def handoff_read() -> handoff.HandoffNote:
    """Read the newest hand-off note (seed 003) at the start of a session, before anything else:
    the previous session's state, completed and remaining work, decisions, blockers, context and
    next action, and `server_facts` (runs going, latest results against the baseline, open
    findings, as trainguard saw them when the note was written). Notes live in
    .claude/handoff/; `notes_total` counts them. Without one it says so and what to do. At most
    ~5,000 characters. Cheap."""
    return handoff.read(paths.project_root())


@tool(WRITES)
def handoff_write(
    current_state: Annotated[str, Field(description=handoff.describe("current_state"))],
    completed_work: Annotated[str, Field(description=handoff.describe("completed_work"))],
    remaining_work: Annotated[str, Field(description=handoff.describe("remaining_work"))],
    next_action: Annotated[str, Field(description=handoff.describe("next_action"))],
    decisions_made: Annotated[str, Field(description=handoff.describe("decisions_made"))] = "",
    blockers: Annotated[str, Field(description=handoff.describe("blockers"))] = "",
    context: Annotated[str, Field(description=handoff.describe("context"))] = "",
    files_modified: Annotated[str, Field(description=handoff.describe("files_modified"))] = "",
    phase: Annotated[
        str, Field(description=f"the phase or plan, e.g. '04-architecture'; at most {handoff.FRONT_CHARS} characters")
    ] = "",
    task: Annotated[str, Field(description=f"the task, one line; at most {handoff.FRONT_CHARS} characters")] = "",
    status: handoff.NoteStatus = "in_progress",
    agent: Agent = "training-runner",
    baseline: Annotated[
        str | None,
        Field(
            description="a run id or a figure (e.g. '20.47') the latest results are measured against; "
            "default: the previous note's"
        ),
    ] = None,
) -> handoff.WriteResult:
    """Write a hand-off note for the next session (seed 003) before you return with work left, or
    when the user asks: a NEW file in .claude/handoff/ (earlier notes stay), with front matter
    (phase, status, last_updated) and one tagged section per field. The server adds
    `server_facts` itself: runs running or queued with status and headline, the latest results
    (best primary metric, against `baseline`) and their open warn/fail findings; do not restate
    them, say what they mean. Each field has a limit (see its description); longer text is
    clipped with a note and named in `clipped`. Cheap."""
    return handoff.write(
        paths.project_root(),
        current_state=current_state,
        completed_work=completed_work,
        remaining_work=remaining_work,
        next_action=next_action,
        decisions_made=decisions_made,
        blockers=blockers,
        context=context,
        files_modified=files_modified,
        phase=phase,
        task=task,
        status=status,
        agent=agent,
        baseline=baseline,
    )


SweepId = Annotated[
    str, Field(description="a sweep id (NNN-sweep-YYYYMMDD-HHMMSS), as launch_sweep or sweep_status shows it")
]


@tool(WRITES)
def launch_sweep(
    experiment: str | int,
    space: Annotated[
        dict[str, Any] | None,
        Field(
            description="parameter -> a list of values (grid, or choices for random/tpe), "
            "{'low': a, 'high': b, 'log': true} (random/tpe), or {'choices': [...]}; "
            "default: the experiment's sweep.toml"
        ),
    ] = None,
    strategy: sweep_spec.Strategy | None = None,
    max_trials: Annotated[int, Field(ge=1, le=sweep_spec.MAX_TRIALS)] | None = None,
    parallel: Annotated[int, Field(ge=1, le=sweep_spec.MAX_PARALLEL)] | None = None,
    metric: str | None = None,
    prune: sweep_spec.PruneKind | sweep_spec.Pruning | None = None,
    trial_budget_s: Annotated[float, Field(gt=0, le=sweep_spec.MAX_BUDGET_S)] | None = None,
    overrides: dict[str, Scalar] | None = None,
    acknowledge: list[str] | None = None,
    note: str = "",
    agent: str = "training-runner",
) -> sweeps.SweepLaunch:
    """Start a hyperparameter sweep of an experiment in the background: every trial is an
    ordinary run (same pre-flight, danger rules, slots and watchdog as launch_run), launched by a
    sweep driver that outlives this session. `space` maps parameters to lists (strategy grid, in
    the order written) or ranges (random, or tpe: Optuna's model-based sampler); default is the
    experiment's sweep.toml, whose keys these arguments override (`overrides` and `acknowledge`
    add to its own). `overrides` are fixed for
    every trial (e.g. {"epochs": 8}). `prune` (median, asha or none; default median) stops a
    losing trial early (it checkpoints) and records it `pruned` with the evidence;
    `trial_budget_s` caps each trial's wall-clock time from its trainer's start (it then stops
    and counts with its best so far). `parallel`: trials at once (default one
    per GPU, one on a CPU). A config that fails pre-flight is recorded as skipped; one whose
    danger rule fires needs it in `acknowledge`. Then call sweep_status every few minutes."""
    return sweeps.launch_sweep(
        str(experiment),
        space=space,
        strategy=strategy,
        max_trials=max_trials,
        parallel=parallel,
        metric=metric,
        prune=prune,
        trial_budget_s=trial_budget_s,
        overrides=overrides,
        acknowledge=acknowledge,
        note=note,
        agent=agent,
    )


@tool(READ_ONLY)
def sweep_status(
    sweep_id: SweepId | None = None,
    experiment: str | int | None = None,
    limit: Annotated[int, Field(ge=sweeps.TABLE_ROWS[0], le=sweeps.TABLE_ROWS[1])] = 20,
) -> sweeps.SweepStatus:
    """A sweep's table, best first: each trial's parameters that differ, best value of the
    sweep's metric with its epoch, status (running, queued, complete, pruned with the evidence,
    skipped with the pre-flight's reason, failed), the best configuration so far, trials left
    and, with enough complete trials, each parameter's importance. Give `sweep_id`, or
    `experiment` for its newest sweep, or nothing for the project's newest; `other_sweeps` lists
    the rest. A sweep whose driver died (a reboot) is given a new one and goes on. Cheap."""
    return sweeps.sweep_status(sweep_id, None if experiment is None else str(experiment), limit)


@tool(DESTRUCTIVE)
def stop_sweep(sweep_id: SweepId) -> sweeps.SweepStop:
    """Stop a sweep: no new trial starts, and each running or queued trial is stopped (SIGTERM:
    it saves a checkpoint). Returns when none of its processes is left. Finished trials stay;
    promote_sweep still works on them."""
    return sweeps.stop_sweep(sweep_id)


@tool(WRITES)
def promote_sweep(
    sweep_id: SweepId,
    top_k: Annotated[int, Field(ge=1, le=sweeps.MAX_PROMOTE)] = 1,
    overrides: dict[str, Scalar] | None = None,
    note: str = "",
    agent: str = "training-runner",
    acknowledge: list[str] | None = None,
    dry_run: bool = False,
) -> sweeps.Promoted:
    """Quick search, then full (seed 003): launch the full-budget run of the sweep's best `top_k`
    complete trials, each with its parameters over the sweep's overrides and `overrides` over
    both (e.g. {"quick_search": false} or {"epochs": 100}), through the same pre-flight as
    launch_run. Returns the new run ids; wait_run on them."""
    return sweeps.promote_sweep(
        sweep_id, top_k, overrides, note=note, agent=agent, acknowledge=acknowledge, dry_run=dry_run
    )


@tool(WRITES)
def open_dashboard(
    port: Annotated[int, Field(ge=1024, le=65535, description="a port to listen on; default a free one")] | None = None,
) -> dashboard.DashboardInfo:
    """Start this project's live dashboard for the user (or find the one running) and return its
    URL: every run live (status, queue, headline, findings), a run's curves as they grow with its
    watchdog events, findings and diagnosis, the GPUs over the last minutes, runs compared, and
    stop/resume buttons. It listens on 127.0.0.1 only and the URL carries its access token: give
    the URL to the user; it is for people, the tools stay yours. Cheap when one runs already."""
    return dashboard.open_dashboard(paths.project_root(), port)


def serve() -> None:
    """Serve MCP over stdio. Logging goes to stderr: stdout is the wire."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    threading.Thread(target=_revive_sweeps, name="revive-sweeps", daemon=True).start()
    mcp.run("stdio")


def _revive_sweeps() -> None:
    """Give each sweep that should be running and has no driver (a reboot killed it) a new one."""
    try:
        revived = sweeps.revive(paths.project_root())
    except (OSError, TrainguardError) as exc:
        log.warning("sweeps not checked for a lost driver: %s", exc)
        return
    if revived:
        log.info("sweeps going on with a new driver: %s", ", ".join(revived))
