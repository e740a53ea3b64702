"""Pre-flight's data checks: the folders and files a run reads and writes.

An input must exist, be readable, hold enough files of the expected kind, and one sample of
them must decode with the trainer's own interpreter (a truncated PNG or a pickle where a
tensor file belongs fails here, not an hour into the run). An output must not hold a
finished run. The synthetic-data rule of seed 000 is a danger rule (rules.py), not a check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcp_server import paths, probe
from mcp_server.checks import Check
from mcp_server.specs import ParamSpec, TrainerSpec

DECODE_TIMEOUT_S = 60  # mcp_server/probes/data_probe.py decodes one file fully
MAX_FILES_COUNTED = 100_000


def data_checks(
    exp_id: str, spec: TrainerSpec, config: dict[str, Any], project: Path, python: str | None
) -> list[Check]:
    """One check per path parameter that is set: inputs exist, are readable, hold enough files and
    a sample decodes (with `python`; not tried without a working interpreter); outputs would not
    overwrite a finished run."""
    checks = []
    for name, param in spec.params.items():
        if param.type != "path" or config.get(name) is None:
            continue
        path = paths.confine(project, str(config[name]), what=f"parameter {name!r}")
        if param.output:
            checks.append(_output_path_check(name, config[name], path, spec))
        elif param.must_exist:
            check = _input_path_check(exp_id, name, param, config[name], path, project)
            if check.verdict == "pass" and param.decode and python is not None:
                check = _decode_check(check, name, param, path, python)
            checks.append(check)
    if not checks:
        checks.append(Check(name="data", verdict="pass", detail=f"{spec.name} generates its own data"))
    return checks


def _input_path_check(exp_id: str, name: str, param: ParamSpec, value: Any, path: Path, project: Path) -> Check:
    label = f"data:{name}"
    if not path.exists():
        fix = (
            f"Create it with prepare_data(experiment='{exp_id}') (CLI: trainguard prepare {exp_id}), "
            f"or override {name} with an existing path."
            if param.prepare
            else f"Create or download it, or override {name} with an existing path inside {project}."
        )
        return Check(name=label, verdict="fail", detail=f"{name}={value} does not exist ({path}).", fix=fix)
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return Check(name=label, verdict="fail", detail=f"{name}={value} is not readable.", fix=f"chmod u+rX {path}")
    if param.min_files and path.is_dir():
        count = 0
        for item in path.glob(param.file_glob):
            count += item.is_file()
            if count >= param.min_files or count >= MAX_FILES_COUNTED:
                break
        if count < param.min_files:
            return Check(
                name=label,
                verdict="fail",
                detail=f"{name}={value} holds {count} files matching {param.file_glob}; it needs at least "
                f"{param.min_files}.",
                fix=f"Fill it (e.g. prepare_data(experiment='{exp_id}')) or point {name} at the full data set."
                if param.prepare
                else f"Point {name} at the full data set.",
            )
        return Check(
            name=label, verdict="pass", detail=f"{name}={value}: at least {count} files matching {param.file_glob}"
        )
    return Check(name=label, verdict="pass", detail=f"{name}={value} ({path})")


def _output_path_check(name: str, value: Any, path: Path, spec: TrainerSpec) -> Check:
    label = f"output:{name}"
    if path.is_dir() and any(path.iterdir()):
        names = sorted(p.name for p in path.iterdir())[:5]
        fresh = next(f"{value}-{n}" for n in range(2, 10_000) if not path.with_name(f"{path.name}-{n}").exists())
        resume = " or resume from its checkpoint (the resume parameter)" if "resume" in spec.params else ""
        return Check(
            name=label,
            verdict="fail",
            detail=f"{name}={value} already holds a run ({', '.join(names)}...): training would overwrite it.",
            fix=f"Override {name} with a fresh folder such as {fresh!r}{resume}.",
        )
    if path.exists() and not path.is_dir():
        return Check(
            name=label,
            verdict="fail",
            detail=f"{name}={value} is a file, not a folder.",
            fix=f"Override {name} with a folder path.",
        )
    return Check(name=label, verdict="pass", detail=f"{name}={value} is fresh ({path})")


def _first_sample(path: Path, glob: str) -> Path | None:
    if path.is_file():
        return path
    return next((p for p in path.glob(glob) if p.is_file()), None)


def _decode_check(passed: Check, name: str, param: ParamSpec, path: Path, python: str) -> Check:
    """Decode one sample of an input that passed, as `param.decode` says (image, torch, numpy, json)."""
    sample = _first_sample(path, param.file_glob)
    if sample is None:
        return passed
    rel = sample.relative_to(path) if sample != path else sample.name
    try:
        result = probe.run(python, "data_probe", [str(param.decode), str(sample)], timeout_s=DECODE_TIMEOUT_S).data
    except probe.ProbeError as exc:  # no verdict on the file: the interpreter could not answer
        return Check(
            name=passed.name,
            verdict="fail",
            detail=f"{passed.detail}, but the sample {rel} could not be decoded: {exc}",
            fix=f"Check that {python} runs and can import the {param.decode} reader; if the file is the "
            f"problem (a huge or broken file), replace or remove {sample}.",
        )
    if not result.get("ok"):
        return Check(
            name=passed.name,
            verdict="fail",
            detail=f"{passed.detail}, but the sample {rel} does not decode as {param.decode}: {result.get('error')}",
            fix=f"Replace or remove the broken file {sample}, or rebuild {name} (truncated, or another kind of file).",
        )
    return Check(name=passed.name, verdict="pass", detail=f"{passed.detail}; sample {rel} decodes: {result['info']}")
