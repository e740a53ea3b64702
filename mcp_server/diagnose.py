"""Why did a run end the way it did? A classification with the lines that show it and the fix.

`diagnose(run)` reads what the supervisor recorded (exit code, signal, stop request, watchdog
events), the end of stderr and stdout, and the metrics stream, and matches them against the
failures the seeds describe: CUDA/HIP out of memory, HIP errors (a missing
`HSA_OVERRIDE_GFX_VERSION`), tensors on different devices, a wrong dtype (seed 002's
`edge_index` must be `torch.long`), a non-finite loss, import errors, missing files, the
kernel's OOM killer, a full disk, a user stop, a stall. Each rule names its evidence and the
remedies; the first rule that matches is the class, later matches are listed as secondary.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from mcp_server import safefiles
from mcp_server.curves.summary import CurveSummary, summarize_run_dir
from mcp_server.errors import TrainguardError
from mcp_server.rundir import Manifest, RunDir, RunState
from mcp_server.textlog import read_tail, sanitize

TAIL_BYTES = 256 * 1024  # enough for a long traceback; the evidence quoted is a few lines of it
MAX_EVIDENCE = 6
MAX_LINE = 300
MAX_ERROR_FILE = 256 * 1024


class Evidence(BaseModel):
    source: str  # "stderr", "stdout", "state", "metrics", "manifest"
    text: str


class Diagnosis(BaseModel):
    """`diagnose_run`: the class of the ending, its evidence and what to do."""

    run_id: str
    status: str
    failure_class: str
    summary: str
    evidence: list[Evidence]
    remedies: list[str]
    also: list[str]
    rank: int | None = None  # under torchrun: the rank that failed first


class RankFailure(BaseModel):
    """The first rank to fail in a torchrun job, from its error file."""

    rank: int
    message: str
    traceback_tail: list[str]
    error_file: str


@dataclass
class _Facts:
    run: RunDir
    manifest: Manifest
    state: RunState
    stderr: list[str]
    stdout: list[str]
    summary: CurveSummary
    rank_failure: RankFailure | None = None


def first_rank_failure(folder: Path) -> RankFailure | None:
    """The earliest error file torchrun's ranks left under `folder` (`<job>/attempt_<n>/<local
    rank>/error.json`, written by trainkit's `record`): which rank failed first, and with what.
    On one node (`--standalone`) the local rank is the rank."""
    found = []
    for path in safefiles.walk(folder, max_depth=4, max_files=512):
        if path.name != "error.json" or not path.parent.name.isdigit():
            continue
        try:
            info = path.lstat()
            if info.st_size > MAX_ERROR_FILE:
                continue
            body = json.loads(safefiles.read_text(path, follow_links=False))["message"]
            # The file's own time orders failures within the second its timestamp names: the
            # rank that failed first, not the ones a broken collective took down after it.
            found.append((info.st_mtime_ns, int(path.parent.name), body, path))
        except (OSError, TrainguardError, ValueError, KeyError, TypeError, AttributeError):
            continue
    if not found:
        return None
    _, rank, body, path = min(found, key=lambda item: (item[0], item[1]))
    trace = [sanitize(line)[:MAX_LINE] for line in str(body.get("extraInfo", {}).get("py_callstack", "")).splitlines()]
    return RankFailure(
        rank=rank,
        message=sanitize(str(body.get("message", "")))[:MAX_LINE],
        traceback_tail=[line for line in trace if line.strip()][-4:],
        error_file=str(path),
    )


@dataclass
class _Rule:
    name: str
    summary: str
    patterns: list[str]  # regexes searched in stderr, then stdout
    remedies: list[str]
    check: Callable[[_Facts], list[Evidence]] | None = None  # facts beyond the log text


def _grep(facts: _Facts, patterns: list[str]) -> list[Evidence]:
    found = []
    for source, lines in (("stderr", facts.stderr), ("stdout", facts.stdout)):
        for line in lines:
            if any(re.search(p, line) for p in patterns):
                found.append(Evidence(source=source, text=line.strip()[:MAX_LINE]))
    # The last matches are nearest the failure; keep those, in file order.
    return found[-MAX_EVIDENCE:]


def _signal_name(number: int | None) -> str | None:
    try:
        return signal.Signals(number).name if number else None
    except ValueError:
        return f"signal {number}"


def _user_stop(f: _Facts) -> list[Evidence]:
    if f.state.status in ("stopped", "pruned") or (f.run.stop_marker.exists() and f.state.status != "succeeded"):
        return [
            Evidence(
                source="state",
                text=f"stop requested; status {f.state.status}, "
                f"signal {_signal_name(f.state.signal)}, exit code {f.state.exit_code}"
                + (f"; {f.state.stopped_because}" if f.state.stopped_because else ""),
            )
        ]
    return []


def _watchdog_stop(kind: str) -> Callable[[_Facts], list[Evidence]]:
    def check(f: _Facts) -> list[Evidence]:
        return [
            Evidence(source="state", text=f"watchdog {e['kind']}: {e['detail']}")
            for e in f.state.events
            if e.get("kind") == kind and e.get("action") == "stop"
        ][-MAX_EVIDENCE:]

    return check


def _nonfinite(f: _Facts) -> list[Evidence]:
    return [
        Evidence(source="metrics", text=finding.evidence)
        for finding in f.summary.findings
        if finding.rule == "nonfinite"
    ][:MAX_EVIDENCE]


def _kernel_oom(f: _Facts) -> list[Evidence]:
    if f.state.signal == signal.SIGKILL and not f.run.stop_marker.exists():
        return [
            Evidence(
                source="state",
                text="the trainer was killed by SIGKILL and nobody asked it to stop: the "
                "kernel's OOM killer does that when the host runs out of RAM",
            )
        ]
    return []


def _disk_full(f: _Facts) -> list[Evidence]:
    """What the supervisor saw (a full disk leaves no room for the trainer's own error message)."""
    if f.state.signal == signal.SIGXFSZ:
        return [Evidence(source="state", text="killed by SIGXFSZ: a file grew past the file-size limit")]
    if f.state.failure and "disk full on" in f.state.failure:
        return [Evidence(source="state", text=f.state.failure[:MAX_LINE])]
    return []


def _missing_override(f: _Facts) -> list[Evidence]:
    env = f.manifest.env
    hits = _grep(
        f, [r"invalid device function", r"hipErrorNoBinaryForGpu", r"no kernel image is available", r"HSA_STATUS_ERROR"]
    )
    if hits and "HSA_OVERRIDE_GFX_VERSION" not in env:
        return [*hits, Evidence(source="manifest", text="HSA_OVERRIDE_GFX_VERSION is not in the run's environment")]
    return []


def _slurm(*states: str, failure_prefix: str | None = None) -> Callable[[_Facts], list[Evidence]]:
    """A Slurm ending: the job's state as Slurm reported it, or the supervisor's time-limit record."""

    def check(f: _Facts) -> list[Evidence]:
        if f.state.slurm_state in states:
            return [Evidence(source="slurm", text=f"job {f.state.job_id}: {f.state.slurm_state}; {f.state.failure}")]
        if failure_prefix and (f.state.failure or "").startswith(failure_prefix):
            return [Evidence(source="state", text=(f.state.failure or "")[:MAX_LINE])]
        return []

    return check


OOM_REMEDIES = [
    "Lower the batch size: estimate_memory(experiment, overrides) gives the largest that fits.",
    "Mixed precision (torch.autocast with bfloat16) roughly halves activation memory.",
    "Gradient checkpointing (torch.utils.checkpoint) trades compute for activation memory.",
    "Check for tensors kept alive: accumulate loss.item() or loss.detach(), not the loss with its graph.",
    "Free the GPU first: gpu_status lists other processes on it.",
]

RULES: list[_Rule] = [
    _Rule(
        "user_stop",
        "Stopped on request (stop_run or a signal from the user).",
        [],
        ["Nothing is broken. resume_run(run_id) continues from the last checkpoint."],
        _user_stop,
    ),
    _Rule(
        "timeout",
        "The watchdog stopped the run at its time budget (max_runtime_s).",
        [],
        ["Raise [watchdog] max_runtime_s in the experiment, or fewer epochs; resume_run continues it."],
        _watchdog_stop("timeout"),
    ),
    _Rule(
        "stalled",
        "The watchdog stopped the run: no new metrics for far longer than usual.",
        [],
        [
            "Look at the end of stdout/stderr (tail_log) for a deadlock or a data loader that hangs.",
            "A DataLoader with num_workers > 0 can hang on a worker crash; try num_workers=0 to see the error.",
        ],
        _watchdog_stop("stall"),
    ),
    _Rule(
        "slurm_time_limit",
        "The Slurm job reached its time limit.",
        [],
        [
            "Ask for more time (resources.time, within the partition's limit).",
            "Pass requeue=true: at the limit it saves its checkpoint, goes back to the queue and resumes by itself.",
            "resume_run continues it from its last checkpoint now.",
        ],
        _slurm("TIMEOUT", failure_prefix="the Slurm time limit came"),
    ),
    _Rule(
        "slurm_memory_limit",
        "The Slurm job exceeded its memory limit (its cgroup's OOM killer ended it).",
        [],
        [
            "Ask for more memory (resources.mem), or lower batch_size / the data kept in RAM.",
            "estimate_memory gives the GPU side; host RAM grows with data held in memory and DataLoader workers.",
        ],
        _slurm("OUT_OF_MEMORY"),
    ),
    _Rule(
        "slurm_node_failure",
        "The Slurm job's node failed.",
        [],
        [
            "resume_run continues it from its last checkpoint (Slurm picks a healthy node).",
            "If it recurs on one node, exclude it: resources.extra = {exclude = 'node12'}.",
        ],
        _slurm("NODE_FAIL", "BOOT_FAIL"),
    ),
    _Rule(
        "slurm_preempted",
        "A higher-priority job preempted the Slurm job.",
        [],
        [
            "Pass requeue=true so a preempted job goes back to the queue and resumes by itself.",
            "Use a qos or partition that is not preemptible, if your cluster has one.",
        ],
        _slurm("PREEMPTED"),
    ),
    _Rule(
        "gpu_out_of_memory",
        "The GPU ran out of memory.",
        [
            r"CUDA out of memory",
            r"OutOfMemoryError",
            r"HIP out of memory",
            r"hipErrorOutOfMemory",
            r"CUBLAS_STATUS_ALLOC_FAILED",
            r"out of memory on device",
        ],
        OOM_REMEDIES,
    ),
    _Rule(
        "hip_missing_override",
        "ROCm has no kernels for this AMD card: HSA_OVERRIDE_GFX_VERSION is not set.",
        [],
        [
            'Add HSA_OVERRIDE_GFX_VERSION = "11.0.0" (RDNA3, e.g. RX 7800 XT; "10.3.0" for RDNA2) to the trainer '
            "spec's [env] table; preflight's amd check names the value for the card."
        ],
        _missing_override,
    ),
    _Rule(
        "hip_error",
        "A HIP/ROCm runtime error.",
        [r"HIP error", r"hipError", r"ROCm", r"amdgpu", r"HSA_STATUS"],
        [
            "Check that torch is a ROCm build matching the driver (preflight's torch check).",
            "On consumer cards set HSA_OVERRIDE_GFX_VERSION (preflight's amd check).",
        ],
    ),
    _Rule(
        "device_mismatch",
        "Tensors on different devices met in one operation.",
        [r"Expected all tensors to be on the same device", r"found at least two devices"],
        [
            "Move the model and every input to the same device (model.to(device), batch.to(device)).",
            "Tensors created inside forward need device=x.device.",
        ],
    ),
    _Rule(
        "wrong_dtype",
        "A tensor has the wrong dtype for the operation.",
        [
            r"expected scalar type \w+ but found \w+",
            r"must be torch\.long",
            r"scalar types: Long, Int",
            r"expected .* to have .*dtype",
            r"edge_index.*(dtype|long)",
            r"result type Float can't be cast",
        ],
        [
            "Index tensors (seed 002: edge_index) must be torch.long: edge_index = edge_index.long().",
            "Cast inputs to the model's dtype (x.float()) and targets to what the loss expects (class ids long).",
        ],
    ),
    _Rule(
        "nonfinite_loss",
        "The loss became NaN or infinite.",
        [r"loss is nan", r"[Nn]a[Nn] loss", r"non-finite", r"Function '.*' returned nan"],
        [
            "Lower the learning rate (seed 000: 1e-4 was unstable, 1e-5 was not).",
            "Keep gradient clipping on (clip_grad_norm_ 1.0).",
            "Check the data for NaN/inf and the loss for log(0) or division by zero.",
        ],
        _nonfinite,
    ),
    _Rule(
        "watchdog_nonfinite",
        "The watchdog stopped the run on a non-finite metric.",
        [],
        ["Lower the learning rate, keep gradient clipping on, and check the data."],
        _watchdog_stop("nonfinite"),
    ),
    _Rule(
        "import_error",
        "A module failed to import.",
        [r"ModuleNotFoundError", r"ImportError", r"No module named"],
        [
            "Install the missing package into the trainer's interpreter (preflight names it), "
            "e.g. .venv/bin/pip install <package>."
        ],
    ),
    _Rule(
        "missing_file",
        "A file or folder the trainer needs does not exist.",
        [r"FileNotFoundError", r"No such file or directory"],
        [
            "Create the data (prepare_data(experiment)) or pass the right path as an override.",
            "preflight checks every input path of the spec.",
        ],
    ),
    _Rule(
        "disk_full",
        "The disk (or the file-size limit) filled up while writing.",
        [r"No space left on device", r"Errno 28", r"File too large", r"Errno 27"],
        [
            "Free disk space (checkpoints of old runs) or set TRAINGUARD_RUNS_DIR to a bigger disk.",
            "Save fewer checkpoints (only best and last).",
        ],
        _disk_full,
    ),
    _Rule(
        "host_out_of_memory",
        "The host ran out of RAM.",
        [r"MemoryError", r"std::bad_alloc", r"Cannot allocate memory", r"DefaultCPUAllocator: can't allocate"],
        ["Keep less data in RAM (memory-map it, or a smaller subset).", "Lower the batch size or num_workers."],
    ),
    _Rule(
        "killed_by_kernel_oom",
        "Killed by the kernel's OOM killer (SIGKILL nobody asked for).",
        [],
        [
            "The host ran out of RAM: lower the batch size, num_workers, or the data held in memory.",
            "`dmesg | grep -i oom` confirms it when you may read the kernel log.",
        ],
        _kernel_oom,
    ),
]


def _read_lines(path: Path) -> list[str]:
    return [sanitize(line) for line in read_tail(path, TAIL_BYTES).splitlines() if line.strip()]


def diagnose(run: RunDir, state: RunState) -> Diagnosis:
    """Classify how the run ended (or why it is unhealthy while it runs)."""
    manifest = run.read_manifest()
    ranks = run.path / "torchrun"
    facts = _Facts(
        run=run,
        manifest=manifest,
        state=state,
        stderr=_read_lines(run.stderr),
        stdout=_read_lines(run.stdout),
        summary=summarize_run_dir(run.path, manifest),
        rank_failure=first_rank_failure(ranks) if state.status == "failed" and ranks.is_dir() else None,
    )
    matched: list[tuple[_Rule, list[Evidence]]] = []
    for rule in RULES:
        evidence = (rule.check(facts) if rule.check else []) + (_grep(facts, rule.patterns) if rule.patterns else [])
        if evidence:
            matched.append((rule, evidence[:MAX_EVIDENCE]))
    if state.status == "succeeded" and not any(r.name == "nonfinite_loss" for r, _ in matched):
        return Diagnosis(
            run_id=run.run_id,
            status=state.status,
            failure_class="none",
            summary=f"Finished normally. {facts.summary.headline}",
            evidence=[],
            remedies=[],
            also=[r.name for r, _ in matched],
        )
    if not matched:
        return _by_rank(_unclassified(run, state, facts), facts.rank_failure)
    rule, evidence = matched[0]
    return _by_rank(
        Diagnosis(
            run_id=run.run_id,
            status=state.status,
            failure_class=rule.name,
            summary=rule.summary,
            evidence=evidence,
            remedies=rule.remedies,
            also=[r.name for r, _ in matched[1:]],
        ),
        facts.rank_failure,
    )


def _by_rank(diagnosis: Diagnosis, failure: RankFailure | None) -> Diagnosis:
    """The diagnosis of a torchrun job, with the rank that failed first and its error in front."""
    if failure is None:
        return diagnosis
    lead = [
        Evidence(source=f"rank {failure.rank}", text=failure.message),
        *(Evidence(source=f"rank {failure.rank}", text=line) for line in failure.traceback_tail[-2:]),
    ]
    return diagnosis.model_copy(
        update={
            "rank": failure.rank,
            "summary": f"Rank {failure.rank} failed first ({failure.message}); torchrun then ended the other ranks. "
            + diagnosis.summary,
            "evidence": (lead + diagnosis.evidence)[:MAX_EVIDENCE],
            "remedies": diagnosis.remedies + [f"Its traceback in full: {failure.error_file}."],
        }
    )


def _unclassified(run: RunDir, state: RunState, facts: _Facts) -> Diagnosis:
    if state.status in ("starting", "running"):
        return Diagnosis(
            run_id=run.run_id,
            status=state.status,
            failure_class="none",
            summary=f"Running with nothing wrong seen so far. {facts.summary.headline}",
            evidence=[],
            remedies=[],
            also=[],
        )
    last = [Evidence(source="stderr", text=line[:MAX_LINE]) for line in facts.stderr[-3:]]
    how = state.failure or f"status {state.status}"
    return Diagnosis(
        run_id=run.run_id,
        status=state.status,
        failure_class="crash" if state.status == "failed" else state.status,
        summary=f"Ended without a known cause: {how}.",
        evidence=[Evidence(source="state", text=how), *last],
        remedies=[
            "Read the last lines of stderr (tail_log(run_id, stream='stderr')) for the exception.",
            "Re-run a few steps with a smaller configuration to reproduce it quickly.",
        ],
        also=[],
    )
