"""Pre-flight checks: everything that can be known before a run starts, each pass/warn/fail.

Each check says what it saw and, when it is not a pass, what to change. Torch is probed in
a subprocess with the trainer's own interpreter: the server never imports it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mcp_server import backends, datacheck, gpu, memory, paths, probe, registry, rules, trainer_env
from mcp_server.backends.model import Placement, Resources
from mcp_server.checks import Check, Verdict, overall
from mcp_server.errors import InvalidInput
from mcp_server.specs import Scalar, TrainerSpec, resolve_config

DISK_FAIL_BYTES = 200 * 2**20
DISK_WARN_BYTES = 2 * 2**30
INODES_FAIL = 64  # a run makes about ten files; checkpoints and logs a few more
PROBE_TIMEOUT_S = 90
PROBE_TTL_S = 300


class PreflightReport(BaseModel):
    """Everything `preflight` found for one experiment with its overrides."""

    experiment: str
    title: str
    source: str
    trainer: str
    python: str
    config: dict[str, Scalar | None]
    overrides: dict[str, Scalar]
    verdict: Verdict
    checks: list[Check]
    danger_fired: list[str]
    summary: str
    backend: str = "local"
    resources: Resources = Field(default_factory=Resources)


def trainer_python(exp: registry.Experiment, project: Path) -> str:
    """The interpreter for the experiment's trainer: its `python`, `TRAINGUARD_PYTHON`, the
    trainers environment `install_torch` made, or ours.

    A venv's interpreter is a symlink out of the project, so the path is checked lexically
    (inside the project), not resolved.
    """
    if exp.python:
        candidate = Path(os.path.normpath(project / exp.python))
        if not candidate.is_relative_to(project):
            raise InvalidInput(f"{exp.id}: python {exp.python!r} is outside the project {project}.")
        return str(candidate)
    return os.environ.get("TRAINGUARD_PYTHON") or trainer_env.python() or sys.executable


PYTHON_NAME_RE = re.compile(r"python(\d+(\.\d+)?)?")


def venv_problem(python: str) -> str | None:
    """Why an experiment's `python` is not a venv's interpreter, found without running it; None if
    it is one. Pre-flight runs that interpreter (to probe torch, decode a sample, trace memory), so
    it must be `<venv>/bin/python*` beside the venv's pyvenv.cfg, never some other project file."""
    path = Path(python)
    venv = path.parent.parent
    if not os.path.lexists(path):
        return f"{python}: No such file or directory"
    if not PYTHON_NAME_RE.fullmatch(path.name) or path.parent.name != "bin":
        return (
            f"{python} is not a venv's interpreter (<venv>/bin/python*); trainguard runs no other file as "
            "a trainer's interpreter"
        )
    if not (venv / "pyvenv.cfg").is_file():
        return f"{python} is not in a venv ({venv}/pyvenv.cfg is missing)"
    return None


def probe_torch(python: str, devices_env: dict[str, str] | None = None) -> dict[str, Any]:
    """What torch looks like from `python`: version, build (CUDA/ROCm/CPU), the devices it sees and
    their UUIDs, in the order of the run's cuda:0, cuda:1... when `devices_env` holds the run's
    device variables (`memory.run_devices_env`). Cached (the probe helper's one cache).

    A failure is an answer too: {"interpreter_error": what happened and what to do}.
    """
    env = {**os.environ, **(devices_env or {})}
    try:
        return probe.run(python, "torch_probe", timeout_s=PROBE_TIMEOUT_S, env=env, ttl_s=PROBE_TTL_S).data
    except probe.ProbeError as exc:
        return {"interpreter_error": str(exc)}


def _venv_check(python: str, info: dict[str, Any]) -> Check | None:
    """The experiment names a venv's interpreter: it must exist and run as that venv."""
    venv = Path(python).parent.parent
    create = f"python3 -m venv {venv} && {venv}/bin/pip install torch (the build for your GPU)"
    if "interpreter_error" in info:
        return Check(
            name="interpreter",
            verdict="fail",
            detail=f"the experiment's venv: {info['interpreter_error']}",
            fix=f"Create the venv: {create}; or point the experiment's `python` at a venv's bin/python.",
        )
    if Path(info["prefix"]).resolve() != venv.resolve():
        return Check(
            name="interpreter",
            verdict="fail",
            detail=f"{python} runs as {info['prefix']}, not as the venv {venv} (not its packages)",
            fix=f"Recreate the venv ({create}).",
        )
    return Check(
        name="interpreter",
        verdict="pass",
        detail=f"Python {info['python']} of the venv {venv} (the interpreter the run uses)",
    )


def _interpreter_checks(
    python: str, info: dict[str, Any], config: dict[str, Any], gpus: gpu.GpuReport, named_venv: bool = False
) -> list[Check]:
    venv = _venv_check(python, info) if named_venv else None
    if venv is not None and venv.verdict == "fail":
        return [venv]
    if "interpreter_error" in info:
        return [
            Check(
                name="interpreter",
                verdict="fail",
                detail=info["interpreter_error"],
                fix="Point the experiment's `python` at an existing interpreter (e.g. .venv/bin/python).",
            )
        ]
    checks = [venv or Check(name="interpreter", verdict="pass", detail=f"Python {info['python']} at {python}")]
    if "torch_error" in info:
        checks.append(
            Check(
                name="torch",
                verdict="fail",
                detail=f"torch does not import with {python}: {info['torch_error']}",
                fix="Ask the user, then install it (minutes; GBs for a GPU build): install_torch(build='cpu', "
                "'cuda' or 'rocm') (CLI: trainguard install-torch --torch cpu) makes trainguard's own trainers "
                f"environment; or install torch into that interpreter yourself ({python} -m pip install torch).",
            )
        )
        return checks
    checks.append(_build_check(info, gpus))
    checks.append(_device_check(info, config.get("device")))
    return checks


def _build_check(info: dict[str, Any], gpus: gpu.GpuReport) -> Check:
    """torch's build (CUDA, ROCm or CPU) against the GPUs that are actually here."""
    build = f"ROCm {info['hip']}" if info.get("hip") else f"CUDA {info['cuda']}" if info.get("cuda") else "CPU"
    detail = f"torch {info['torch']} ({build} build)"
    vendors = {d.vendor for d in gpus.devices}
    if "nvidia" in vendors and not info.get("cuda"):
        return Check(
            name="torch",
            verdict="warn",
            detail=f"{detail}, but an NVIDIA GPU is here and this build cannot use it",
            fix="Install a CUDA build of torch into the trainer's interpreter (see pytorch.org for the command).",
        )
    if "nvidia" in vendors and not info.get("cuda_available"):
        return Check(
            name="torch",
            verdict="warn",
            detail=f"{detail}, but torch cannot reach the NVIDIA GPU",
            fix="Check that the driver supports this CUDA version (nvidia-smi shows the highest it supports).",
        )
    return Check(name="torch", verdict="pass", detail=detail)


# Consumer AMD cards whose gfx target ROCm's torch builds ship no kernels for: they run the
# nearest supported target's kernels when HSA_OVERRIDE_GFX_VERSION names it (seed 000: 11.0.0
# on an RX 7800 XT, gfx1101). Without it the first kernel fails ("invalid device function").
HSA_OVERRIDES = {
    "gfx1101": "11.0.0",
    "gfx1102": "11.0.0",
    "gfx1103": "11.0.0",  # RDNA3: RX 7800/7700/7600, 780M
    "gfx1031": "10.3.0",
    "gfx1032": "10.3.0",
    "gfx1034": "10.3.0",
    "gfx1035": "10.3.0",
    "gfx1036": "10.3.0",
}


def _amd_check(nodes: list[gpu.AmdNode], spec_env: dict[str, str]) -> Check | None:
    """HSA_OVERRIDE_GFX_VERSION against the AMD GPUs here; None when there is none."""
    if not nodes:
        return None
    value = spec_env.get("HSA_OVERRIDE_GFX_VERSION") or os.environ.get("HSA_OVERRIDE_GFX_VERSION")
    source = "the trainer spec's [env]" if "HSA_OVERRIDE_GFX_VERSION" in spec_env else "the environment"
    gfx = ", ".join(sorted({n.gfx for n in nodes}))
    needed = {HSA_OVERRIDES[n.gfx] for n in nodes if n.gfx in HSA_OVERRIDES}
    how = (
        'add HSA_OVERRIDE_GFX_VERSION = "{v}" to the trainer spec\'s [env] table '
        "(or export it before starting Claude Code)"
    )
    if not needed:
        detail = f"AMD {gfx}: supported by ROCm as is"
        return Check(
            name="amd",
            verdict="pass",
            detail=detail + (f"; HSA_OVERRIDE_GFX_VERSION={value} from {source}" if value else ""),
        )
    want = sorted(needed)[0]
    if not value:
        return Check(
            name="amd",
            verdict="fail",
            detail=f"AMD {gfx} needs HSA_OVERRIDE_GFX_VERSION={want}, and it is not set: ROCm's torch has "
            "no kernels for this card (the first GPU op fails with 'invalid device function')",
            fix=how.format(v=want) + ".",
        )
    if value.split(".")[0] != want.split(".")[0]:
        return Check(
            name="amd",
            verdict="warn",
            detail=f"AMD {gfx} takes HSA_OVERRIDE_GFX_VERSION={want}, but {source} sets {value}",
            fix=how.format(v=want) + f" instead of {value}.",
        )
    return Check(name="amd", verdict="pass", detail=f"AMD {gfx}: HSA_OVERRIDE_GFX_VERSION={value} from {source}")


def _device_check(info: dict[str, Any], requested: Any) -> Check:
    gpus = info.get("devices") or []
    if requested in (None, "auto"):
        if gpus:
            return Check(name="device", verdict="pass", detail=f"auto -> cuda: {', '.join(gpus)}")
        if info.get("mps_available"):
            return Check(name="device", verdict="pass", detail="auto -> mps (Apple GPU)")
        return Check(
            name="device",
            verdict="warn",
            detail="auto -> cpu: torch sees no GPU, the run trains on the CPU (slower).",
            fix="Fine for small experiments. For a GPU, install a CUDA or ROCm build of torch.",
        )
    if requested == "cuda" and not gpus:
        return Check(
            name="device",
            verdict="fail",
            detail="device=cuda but torch sees no CUDA/ROCm GPU.",
            fix="Pass device=auto or device=cpu, or install a CUDA/ROCm build of torch.",
        )
    if requested == "mps" and not info.get("mps_available"):
        return Check(name="device", verdict="fail", detail="device=mps but MPS is not available.", fix="Use auto.")
    return Check(name="device", verdict="pass", detail=f"device={requested}")


def _rule_checks(spec: TrainerSpec, config: dict[str, Any], fired: list[rules.DangerRule]) -> list[Check]:
    checks = []
    if spec.known_good:
        off = rules.deviations(spec.known_good, config)
        checks.append(
            Check(
                name="known-good",
                verdict="warn",
                detail="deviates from the known-good table: " + "; ".join(off),
                fix="Use the known-good values unless this run tests an alternative on purpose.",
            )
            if off
            else Check(name="known-good", verdict="pass", detail=f"all {len(spec.known_good)} known-good values kept")
        )
    for rule in fired:
        conditions = ", ".join(f"{name}={config.get(name)!r}" for name in rule.when)
        fix = rule.fix or "Change the setting."
        if rule.severity == "warn":
            fix += f" To run it anyway, tell the user and pass acknowledge=['{rule.id}'] to launch_run."
        checks.append(
            Check(name=f"danger:{rule.id}", verdict=rule.severity, detail=f"{rule.message} ({conditions})", fix=fix)
        )
    return checks


def _output_check(runs_root: Path, project: Path) -> Check:
    linked = runs_root == project / "runs" and runs_root.is_symlink()
    if linked and not runs_root.resolve().is_relative_to(project.resolve()):
        return Check(
            name="output",
            verdict="warn",
            detail=f"{runs_root} is a symbolic link to {runs_root.resolve()}, outside the project: runs go there",
            fix="If that is meant, set TRAINGUARD_RUNS_DIR to it instead of the link; else remove the link.",
        )
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Check(
            name="output",
            verdict="fail",
            detail=f"cannot create {runs_root}: {exc.strerror}",
            fix="Set TRAINGUARD_RUNS_DIR to a writable folder.",
        )
    if not os.access(runs_root, os.W_OK):
        return Check(
            name="output",
            verdict="fail",
            detail=f"{runs_root} is not writable",
            fix="Set TRAINGUARD_RUNS_DIR to a writable folder.",
        )
    st = os.statvfs(runs_root)
    free = st.f_bavail * st.f_frsize
    detail = f"runs go to {runs_root}; {free / 2**30:.1f} GiB free"
    if st.f_files and st.f_favail < INODES_FAIL:
        return Check(
            name="output",
            verdict="fail",
            detail=f"{detail}, but only {st.f_favail} inodes (files) left",
            fix="Delete files on that disk (old runs), or set TRAINGUARD_RUNS_DIR to another disk.",
        )
    if free < DISK_FAIL_BYTES:
        return Check(name="output", verdict="fail", detail=detail, fix="Free disk space before training.")
    if free < DISK_WARN_BYTES:
        return Check(name="output", verdict="warn", detail=detail, fix="Checkpoints may fill the disk; free space.")
    return Check(name="output", verdict="pass", detail=detail)


def _gpu_check(report: gpu.GpuReport) -> Check:
    if not report.devices:
        return Check(name="gpu", verdict="pass", detail=report.note)

    def who(p: gpu.GpuProcess) -> str:
        owner = f"our run {p.run_id}" if p.run_id else (p.name or "not ours")
        used = f", {p.used_memory_bytes / 2**30:.1f} GiB" if p.used_memory_bytes is not None else ""
        return f"pid {p.pid} ({owner}{used})"

    busy = [f"GPU {d.index}: {', '.join(who(p) for p in d.processes)}" for d in report.devices if d.processes]
    free = [
        f"GPU {d.index} {d.name}: {(d.memory_total_bytes - d.memory_used_bytes) / 2**30:.1f} GiB free"
        for d in report.devices
        if d.memory_total_bytes is not None and d.memory_used_bytes is not None
    ]
    if busy:
        return Check(
            name="gpu",
            verdict="warn",
            detail=f"other processes use the GPU: {'; '.join(busy)}",
            fix="Wait for them or stop them (stop_run for ours); two jobs on one GPU slow both and risk OOM.",
        )
    return Check(name="gpu", verdict="pass", detail="; ".join(free) or report.note)


def resolve(
    experiment: str, overrides: dict[str, Any], project: Path
) -> tuple[registry.Experiment, TrainerSpec, dict[str, Scalar | None], str]:
    """The experiment, its trainer spec, the config with the overrides applied, and the interpreter.

    Raises:
        NotFound / InvalidInput: for an unknown experiment or a bad override.
    """
    exp = registry.load_experiment(experiment, project)
    spec = registry.load_trainer(exp.trainer, project)
    config = resolve_config(spec, [(f"experiment {exp.id}", exp.args), ("overrides", overrides)], project)
    return exp, spec, config, trainer_python(exp, project)


def _memory_check(
    exp_id: str,
    spec: TrainerSpec,
    config: dict[str, Any],
    python: str,
    project: Path,
    torch_info: dict[str, Any],
    gpus: gpu.GpuReport,
) -> Check:
    if spec.memory is None:
        return Check(
            name="memory",
            verdict="pass",
            detail=f"no estimate: trainer {spec.name} has no [memory] table (README: Estimating memory)",
        )
    try:
        est = memory.estimate(exp_id, spec, config, python, project, torch_info, gpus)
    except memory.ProbeFailed as exc:
        return Check(
            name="memory",
            verdict="warn",
            detail=f"no estimate: {exc}",
            fix="Fix the trainer's memory_step, or watch the first epoch's memory with gpu_status.",
        )
    return Check(name="memory", verdict=est.verdict, detail=est.detail, fix=est.fix)


def estimate_memory(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    project: Path | None = None,
    gpu_memory_gib: float | None = None,
) -> memory.MemoryEstimate:
    """`estimate_memory`: the memory table for an experiment with its overrides, for the device
    here or for a GPU of `gpu_memory_gib`.

    Raises:
        NotFound / InvalidInput: bad experiment or override; ProbeFailed: no estimate possible.
    """
    project = project or paths.project_root()
    exp, spec, config, python = resolve(experiment, dict(overrides or {}), project)
    problem = venv_problem(python) if exp.python else None
    torch_info = (
        {"interpreter_error": problem} if problem else probe_torch(python, memory.run_devices_env(config, spec.env))
    )
    if "torch" not in torch_info:
        raise memory.ProbeFailed(
            f"torch does not import with {python}: "
            f"{torch_info.get('torch_error') or torch_info.get('interpreter_error')}; run preflight for the fix."
        )
    if gpu_memory_gib is not None and not 0 < gpu_memory_gib <= 4096:
        raise InvalidInput(f"gpu_memory_gib is {gpu_memory_gib}; pass the card's memory in GiB, e.g. 16.")
    return memory.estimate(
        exp.id,
        spec,
        config,
        python,
        project,
        torch_info,
        gpu.shared_sampler(paths.runs_root(project)).sample(),
        gpu_memory_gib,
    )


def run_preflight(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    project: Path | None = None,
    backend: str | None = None,
    resources: dict[str, Any] | None = None,
) -> tuple[PreflightReport, registry.Experiment, TrainerSpec]:
    """Resolve the experiment with its overrides and run every check, where it runs: the
    experiment's `[run]` table, with `backend` and `resources` (merged over its resources)
    taking precedence.

    Raises:
        NotFound / InvalidInput: for an unknown experiment, a bad override, backend or resource
            (before any check).
    """
    project = project or paths.project_root()
    overrides = dict(overrides or {})
    exp, spec, config, python = resolve(experiment, overrides, project)
    placement = placed(exp.placement, backend, resources)
    nproc = placement.resources.nproc

    changed = [f"{k}={config[k]!r}" for k in overrides]
    checks = [
        Check(
            name="experiment",
            verdict="pass",
            detail=f"{exp.id} ({exp.source}): {exp.title}; hypothesis.md present",
        ),
        Check(
            name="parameters",
            verdict="pass",
            detail=f"{len(config)} parameters valid" + (f"; overridden: {', '.join(changed)}" if changed else ""),
        ),
    ]
    fired = rules.fired(spec.danger, config)
    checks += _rule_checks(spec, config, fired)
    gpus = gpu.shared_sampler(paths.runs_root(project)).sample()
    problem = venv_problem(python) if exp.python else None
    torch_info = (
        {"interpreter_error": problem}
        if problem
        else probe_torch(  # nothing else is run
            python, memory.run_devices_env(config, spec.env)
        )
    )
    checks += _interpreter_checks(python, torch_info, config, gpus, named_venv=exp.python is not None)
    amd = _amd_check(gpu.amd_gfx_targets(), spec.env)
    if amd is not None:
        checks.append(amd)
    checks += backends.get(placement.backend).check(
        placement.resources, spec, config, len(torch_info.get("devices") or [])
    )
    if "torch" in torch_info:
        checks.append(_memory_check(exp.id, spec, _per_rank(spec, config, nproc), python, project, torch_info, gpus))
    checks += datacheck.data_checks(exp.id, spec, config, project, python if "torch" in torch_info else None)
    checks.append(_output_check(paths.runs_root(project), project))
    checks.append(_gpu_check(gpus))

    if placement.backend == "slurm":
        checks = [_on_compute_node(c) for c in checks]
    verdict = overall(checks)
    problems = [f"{c.name}: {c.detail}" for c in checks if c.verdict != "pass"]
    summary = {
        "pass": "All checks passed; ready to launch.",
        "warn": "Ready to launch, with warnings: " + " | ".join(problems),
        "fail": "Do not launch: " + " | ".join(problems),
    }[verdict]
    report = PreflightReport(
        experiment=exp.id,
        title=exp.title,
        source=exp.source,
        trainer=spec.name,
        python=python,
        config=config,
        overrides={k: config[k] for k in overrides},
        verdict=verdict,
        checks=checks,
        danger_fired=[rule.id for rule in fired],
        summary=summary,
        backend=placement.backend,
        resources=placement.resources,
    )
    return report, exp, spec


LOCAL_ONLY_CHECKS = frozenset({"device", "gpu", "memory"})


def _on_compute_node(check: Check) -> Check:
    """For a Slurm run, what this machine's devices say is no verdict on the compute node's."""
    if check.name not in LOCAL_ONLY_CHECKS or check.verdict == "pass":
        return check
    return check.model_copy(
        update={"verdict": "warn", "detail": f"on this machine, not the compute node: {check.detail}"}
    )


def placed(base: Placement, backend: str | None, resources: dict[str, Any] | None) -> Placement:
    """`base` with a backend and resources given by the caller.

    Raises:
        InvalidInput: naming the bad field and what it takes.
    """
    merged = base.model_dump() | ({"backend": backend} if backend is not None else {})
    merged["resources"] = merged["resources"] | dict(resources or {})
    try:
        return Placement.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(
            f"{where}: {first['msg']} (got {first.get('input')!r}). backend is local, torchrun or "
            f"slurm; resources takes {sorted(Resources.model_fields)}."
        ) from None


def _per_rank(spec: TrainerSpec, config: dict[str, Any], nproc: int) -> dict[str, Any]:
    """The config one rank of `nproc` trains with: its share of the global batch (the memory
    estimate is per rank, each on its own GPU)."""
    key = spec.memory.batch_param if spec.memory else "batch_size"
    batch = config.get(key)
    if nproc > 1 and isinstance(batch, int) and not isinstance(batch, bool) and batch % nproc == 0:
        return config | {key: batch // nproc}
    return config
