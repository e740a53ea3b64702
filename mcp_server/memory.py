"""Will the run fit? Peak memory of one training step, estimated before launch.

`trainers/memprobe.py` traces the trainer's `memory_step` under PyTorch's fake tensors in a
subprocess with the trainer's own interpreter (the server never imports torch) at two batch
sizes. Peak memory is linear in the batch size for these models (weights, gradients and
optimizer state are fixed; activations and batches grow with it), so two points give the
fixed part and the part per sample; the estimate adds the device's runtime context and an
allocator margin, and compares the need with what the target device has free.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel

from mcp_server import gpu, paths, probe, procs
from mcp_server.checks import Verdict
from mcp_server.errors import TrainguardError
from mcp_server.specs import TrainerSpec, build_argv, expand

MIB = 2**20
GIB = 2**30
# A GPU process holds its runtime before the first tensor: the CUDA/HIP context, kernels and
# cuBLAS/cuDNN handles, 0.3-0.7 GB by card and version (bench/bench_memory.py measures it on a
# real GPU: calibrate with it). The CPU runtime of torch is smaller.
CONTEXT_BYTES = {"gpu": 512 * MIB, "cpu": 256 * MIB}
# The caching allocator rounds blocks up and fragments; tensors alone undercount the reserve.
ALLOCATOR_MARGIN = 0.10
WARN_FRACTION = 0.90  # a need above this share of the free memory is too close to call
PROBE_TIMEOUT_S = 180
PROBE_TTL_S = 600
MEMPROBE = paths.BUNDLED_TRAINERS / "memprobe.py"


class ProbeFailed(TrainguardError):
    """The memory probe could not trace the step; the message carries its error."""


class MemoryRow(BaseModel):
    batch_size: int
    need_bytes: int
    fits: bool | None


class MemoryEstimate(BaseModel):
    """The estimate for one experiment's config on the device it would train on."""

    experiment: str
    batch_param: str
    batch_size: int
    method: Literal["fake", "real-cpu"]
    traced_bytes: dict[int, int]
    fixed_bytes: int
    per_sample_bytes: int
    tensor_bytes: int
    context_bytes: int
    margin_bytes: int
    need_bytes: int
    target: str
    free_bytes: int | None
    total_bytes: int | None
    largest_batch: int | None
    verdict: Verdict
    detail: str
    fix: str | None
    table: list[MemoryRow]
    note: str | None
    seconds: float


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / MIB:.0f} MiB"


def probe_flags(spec: TrainerSpec, config: dict[str, Any], python: str, project: Path) -> list[str]:
    """The flags the run would get (its argv after the command template), without an output dir."""
    argv = build_argv(spec, config, python=python, project=project, output_dir=None)
    return argv[len(expand(spec.command, python=python, trainer_dir=spec.trainer_dir, project=project)) :]


def _fingerprint(inputs: list[Path]) -> tuple:
    """Modification times of the input folders and their sub-folders: files added or removed show."""
    out = []
    for path in inputs:
        try:
            out.append((str(path), path.stat().st_mtime_ns))
            if path.is_dir():
                subdirs = [p for p in path.iterdir() if p.is_dir()][:64]
                out += [(str(p), p.stat().st_mtime_ns) for p in subdirs]
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def run_probe(
    python: str,
    script: Path,
    function: str,
    flags: list[str],
    batch_sizes: list[int],
    cwd: Path,
    inputs: list[Path] = (),
) -> dict[str, Any]:
    """Run trainers/memprobe.py with the trainer's interpreter, through the probe helper.

    Cached while the script, the flags, the project and the input folders (`inputs`, whose
    contents a step may count) are unchanged.

    Raises:
        ProbeFailed: with the probe's own error or the end of its stderr.
    """
    try:
        key = (str(script), script.stat().st_mtime_ns, _fingerprint(list(inputs)))
    except OSError as exc:
        raise ProbeFailed(f"memory.script {script}: {exc.strerror}; fix the [memory] table of the spec.") from None
    limit = min(psutil.virtual_memory().available // 2, 8 * GIB)
    args = [str(script), "--function", function, "--batch-sizes", *map(str, batch_sizes), "--", *flags]
    try:
        answer = probe.run(
            python,
            MEMPROBE,
            args,
            timeout_s=PROBE_TIMEOUT_S,
            env=_probe_env(),
            cwd=cwd,
            ttl_s=PROBE_TTL_S,
            key=key,
            unkeyed_args=["--real-limit-bytes", str(limit)],
        )
    except probe.ProbeError as exc:
        if exc.reason == "timeout":
            raise ProbeFailed(
                f"the memory probe took over {PROBE_TIMEOUT_S} s; the step is too slow to trace"
            ) from None
        raise ProbeFailed(f"memory probe of {script.name}:{function} failed: {exc}") from None
    result = answer.data
    if "error" in result or "peaks" not in result:
        stderr = " ".join(answer.stderr_tail.strip().splitlines()[-3:])[-500:]
        why = result.get("error") or f"exit {answer.returncode}, and its answer has no peaks"
        detail = f" ({stderr})" if stderr else ""
        raise ProbeFailed(f"memory probe of {script.name}:{function} failed: {why}{detail}")
    return result


def _probe_env() -> dict[str, str]:
    # The probe never touches a GPU; hiding it keeps a CUDA context out of the probe.
    return {**procs.child_env({}), "CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}


DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
CUDA_ORDINAL_RE = re.compile(r"cuda:(\d+)")


def cuda_ordinal(config: dict[str, Any]) -> int:
    """The run's device index: N of a `device = "cuda:N"` config, else 0."""
    match = CUDA_ORDINAL_RE.fullmatch(str(config.get("device") or ""))
    return int(match.group(1)) if match else 0


def run_devices_env(config: dict[str, Any], spec_env: dict[str, str]) -> dict[str, str]:
    """The device variables the run will have: ours, then the trainer spec's [env]. A run that
    takes a GPU slot gets `CUDA_DEVICE_ORDER=PCI_BUS_ID` unless one is set (`slots.device_env`),
    and its slot's GPU is the first visible one; a run whose config names `cuda:N` keeps them as
    they are, and CUDA's default order (fastest first). The torch probe runs under these, so its
    device N is the run's cuda:N."""
    env = {k: v for k, v in {**os.environ, **spec_env}.items() if k in DEVICE_VARS}
    if not CUDA_ORDINAL_RE.fullmatch(str(config.get("device") or "")):
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


def _target(
    config: dict[str, Any], torch_info: dict[str, Any], report: gpu.GpuReport, env: dict[str, str]
) -> tuple[str, str, int | None, int | None]:
    """(kind, name, free, total) of the device the run would use when torch sees one, else host RAM.

    The GPU is the run's cuda:N (`cuda_ordinal`) under its device variables (ours and the spec's
    `env`): the device whose UUID torch reported for it (`torch_info` from a probe under
    `run_devices_env`), else by CUDA/HIP/ROCR_VISIBLE_DEVICES over the driver's order.
    """
    wants_gpu = config.get("device") not in ("cpu", "mps")
    ordinal = cuda_ordinal(config)
    d, guessed = gpu.run_device(report.devices, run_devices_env(config, env), ordinal, torch_info.get("uuids"))
    names = torch_info.get("devices") or []
    if wants_gpu and (names or d is not None):
        if d is not None:
            free = (
                None
                if d.memory_total_bytes is None or d.memory_used_bytes is None
                else (d.memory_total_bytes - d.memory_used_bytes)
            )
            guess = (
                (
                    f", taken for the run's cuda:{ordinal} without a UUID from torch (CUDA numbers GPUs fastest "
                    "first; set CUDA_DEVICE_ORDER=PCI_BUS_ID to be sure)"
                )
                if guessed
                else ""
            )
            return "gpu", f"GPU {d.index} ({d.name}{guess})", free, d.memory_total_bytes
        name = names[ordinal] if ordinal < len(names) else "not visible to torch"
        return "gpu", f"GPU {ordinal} ({name})", None, None
    vm = psutil.virtual_memory()
    return "cpu", "host RAM (CPU training)", vm.available, vm.total


def estimate(
    exp_id: str,
    spec: TrainerSpec,
    config: dict[str, Any],
    python: str,
    project: Path,
    torch_info: dict[str, Any],
    report: gpu.GpuReport,
    gpu_memory_gib: float | None = None,
) -> MemoryEstimate:
    """Trace, fit, and compare the need with the target's free memory.

    `gpu_memory_gib` plans for a GPU that is not here (a 16 GB workstation card, a cluster's
    80 GB one) instead of the device the run would get on this machine.

    Raises:
        ProbeFailed: when the trainer has no [memory] table or the probe fails.
    """
    if spec.memory is None:
        raise ProbeFailed(
            f"trainer {spec.name!r} has no [memory] table; add one naming a memory_step function "
            "(README: 'Estimating memory') to get an estimate."
        )
    mem = spec.memory
    batch = config.get(mem.batch_param) or mem.batch_default
    if not isinstance(batch, int):
        raise ProbeFailed(f"{mem.batch_param} is unset; pass it as an override or set memory.batch_default.")
    script = Path(expand([mem.script], python=python, trainer_dir=spec.trainer_dir, project=project)[0])
    if not any(script.resolve().is_relative_to(root.resolve()) for root in (project, spec.trainer_dir)):
        raise ProbeFailed(
            f"memory.script {mem.script!r} of trainer {spec.name!r} resolves to {script.resolve()}, "
            f"outside the project {project}; the estimate imports it, so it must be a project file "
            "(or beside the spec). Fix the spec's [memory] table."
        )
    flags = probe_flags(spec, config, python, project)
    inputs = [
        project / str(config[name])
        for name, p in spec.params.items()
        if p.type == "path" and p.must_exist and config.get(name) is not None
    ]
    result = run_probe(python, script, mem.function, flags, sorted({batch, 2 * batch}), project, inputs)
    traced = {int(b): int(p) for b, p in result["peaks"].items()}

    if gpu_memory_gib is not None:
        kind, target = "gpu", f"a GPU with {gpu_memory_gib:g} GiB free (as asked)"
        free = total = int(gpu_memory_gib * GIB)
    else:
        kind, target, free, total = _target(config, torch_info, report, spec.env)
    context = CONTEXT_BYTES[kind]
    notes = []
    if result["method"] == "real-cpu":
        notes.append(
            f"fake tensors could not trace the step ({result['fallback_reason']}); measured a real "
            f"CPU step at batch {', '.join(map(str, traced))} and extrapolated"
        )
    exceeded = result.get("exceeded")
    if len(traced) >= 2:
        (b1, p1), (b2, p2) = sorted(traced.items())[:2]
        per_sample = max(0, round((p2 - p1) / (b2 - b1)))
        fixed = max(0, p1 - per_sample * b1)
    else:  # a real step that outgrew the probe's limit, or a single point
        b1, p1 = next(iter(traced.items())) if traced else (1, exceeded["bytes"] if exceeded else 0)
        per_sample, fixed = round(p1 / b1), 0
    if exceeded:
        notes.append(
            f"a real CPU step at batch {exceeded['batch_size']} passed {_gib(exceeded['bytes'])} and was "
            "stopped: the need is at least that"
        )

    def need(b: int) -> int:
        tensors = fixed + per_sample * b
        return int(tensors * (1 + ALLOCATOR_MARGIN)) + context

    tensor_bytes = fixed + per_sample * batch
    if exceeded:
        tensor_bytes = max(tensor_bytes, exceeded["bytes"] * batch // max(1, exceeded["batch_size"]))
    need_bytes = int(tensor_bytes * (1 + ALLOCATOR_MARGIN)) + context
    bmax = int(spec.params[mem.batch_param].max or 1 << 20)
    largest = None
    if per_sample == 0:
        notes.append(
            f"the peak did not grow between {mem.batch_param} {min(traced, default=batch)} and "
            f"{max(traced, default=batch)}; no largest batch is extrapolated"
        )
    elif free is not None:
        room = free - context - fixed * (1 + ALLOCATOR_MARGIN)
        largest = max(0, min(bmax, math.floor(room / (per_sample * (1 + ALLOCATOR_MARGIN)))))
    rows = sorted({b for b in (batch // 4, batch // 2, batch, 2 * batch, 4 * batch, largest or 0) if 1 <= b <= bmax})
    table = [MemoryRow(batch_size=b, need_bytes=need(b), fits=None if free is None else need(b) <= free) for b in rows]

    head = (
        f"needs ~{_gib(need_bytes)} at {mem.batch_param}={batch} ({_gib(tensor_bytes)} of tensors + "
        f"{_gib(context)} context + {ALLOCATOR_MARGIN:.0%} margin)"
    )
    fits_text = (
        f"largest {mem.batch_param} that fits ~{largest}"
        if largest
        else "not even batch 1 fits"
        if largest == 0
        else "memory did not grow with the batch in the trace"
    )
    fix = None
    if free is None:
        verdict: Verdict = "warn"
        detail = f"{head}; free memory of {target} unknown"
        fix = "Check the card's free memory yourself (nvidia-smi / amd-smi) before a long run."
    elif need_bytes > free:
        verdict, detail = "fail", f"{head}, but {target} has {_gib(free)} free; {fits_text}"
        fix = (
            f"Lower {mem.batch_param} to {largest} or less"
            if largest
            else "Shrink the model or the inputs, or free the device"
        ) + (", or stop what else uses the GPU." if kind == "gpu" else ".")
    elif need_bytes > WARN_FRACTION * free:
        verdict, detail = "warn", f"{head}, close to the {_gib(free)} free on {target}; {fits_text}"
        fix = (
            f"Leave headroom: {mem.batch_param} {max(1, int(largest * 0.8))} or less."
            if largest
            else "Leave headroom: free memory on the device, or shrink the model or the inputs."
        )
    else:
        verdict, detail = "pass", f"{head}; {target} has {_gib(free)} free; {fits_text}"
    return MemoryEstimate(
        experiment=exp_id,
        batch_param=mem.batch_param,
        batch_size=batch,
        method=result["method"],
        traced_bytes=traced,
        fixed_bytes=fixed,
        per_sample_bytes=per_sample,
        tensor_bytes=tensor_bytes,
        context_bytes=context,
        margin_bytes=int(tensor_bytes * ALLOCATOR_MARGIN),
        need_bytes=need_bytes,
        target=target,
        free_bytes=free,
        total_bytes=total,
        largest_batch=largest,
        verdict=verdict,
        detail=detail,
        fix=fix,
        table=table,
        note="; ".join(notes) or None,
        seconds=result["seconds"],
    )
