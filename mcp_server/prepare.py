"""Running a trainer's data-preparation commands for the data paths that are missing.

A path parameter of a trainer spec may name, under `prepare`, the command that creates it
(e.g. the image folder built from scikit-image's photographs). Pre-flight points to it when
the path is missing; `prepare_data` runs it: an argv list, in the project, in its own
process group, output to a log file, bounded in time. Existing data is never touched.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server import paths, procs, registry
from mcp_server.errors import TrainguardError
from mcp_server.preflight import trainer_python
from mcp_server.specs import expand, resolve_config
from mcp_server.textlog import tail

PREPARE_TIMEOUT_S = 1800.0


class PreparedPath(BaseModel):
    """One data path: whether it had to be made, and how that went."""

    param: str
    path: str
    action: str
    argv: list[str] | None = None
    seconds: float | None = None
    log: str | None = None


class PrepareResult(BaseModel):
    experiment: str
    paths: list[PreparedPath]
    summary: str


def prepare_commands(
    experiment: str, overrides: dict[str, Any] | None = None, project: Path | None = None
) -> tuple[str, list[tuple[str, Path, list[str] | None]]]:
    """For each path parameter that must exist: (name, resolved path, prepare argv or None)."""
    project = project or paths.project_root()
    exp = registry.load_experiment(experiment, project)
    spec = registry.load_trainer(exp.trainer, project)
    config = resolve_config(spec, [(f"experiment {exp.id}", exp.args), ("overrides", overrides or {})], project)
    python = trainer_python(exp, project)
    out = []
    for name, param in spec.params.items():
        if param.type != "path" or not param.must_exist or config.get(name) is None:
            continue
        path = paths.confine(project, str(config[name]), what=f"parameter {name!r}")
        argv = (
            expand(param.prepare, python=python, trainer_dir=spec.trainer_dir, project=project, value=str(path))
            if param.prepare else None
        )
        out.append((name, path, argv))
    return exp.id, out


def prepare_data(
    experiment: str,
    overrides: dict[str, Any] | None = None,
    project: Path | None = None,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> PrepareResult:
    """Create the experiment's missing data paths with their spec's `prepare` commands.

    Raises:
        TrainguardError: if a missing path has no prepare command, or the command fails
            (the message holds the end of its log).
    """
    project = project or paths.project_root()
    exp_id, commands = prepare_commands(experiment, overrides, project)
    results = []
    for name, path, argv in commands:
        if path.exists():
            results.append(PreparedPath(param=name, path=str(path), action="exists"))
            continue
        if argv is None:
            raise TrainguardError(
                f"{name}={path} does not exist and the trainer spec gives no command to create it; "
                "create it yourself or override it with an existing path."
            )
        results.append(_run(exp_id, name, path, argv, project, timeout_s))
    made = [r.param for r in results if r.action == "created"]
    summary = f"created {', '.join(made)}" if made else "all data paths already exist; nothing to do"
    return PrepareResult(experiment=exp_id, paths=results, summary=summary)


def _run(exp_id: str, name: str, path: Path, argv: list[str], project: Path, timeout_s: float) -> PreparedPath:
    logs = paths.runs_root(project) / ".prepare"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{exp_id}-{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    start = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            argv, cwd=project, env=procs.child_env({}), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
            start_new_session=True, close_fds=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            procs.stop_group(proc.pid, grace_s=5.0)
            proc.wait()
            raise TrainguardError(f"preparing {name} took over {timeout_s:.0f} s and was stopped; see {log}.") from None
    if code != 0 or not path.exists():
        raise TrainguardError(
            f"preparing {name} failed (exit code {code}); end of {log}:\n{tail(log)}"
        )
    return PreparedPath(param=name, path=str(path), action="created", argv=argv,
                        seconds=round(time.monotonic() - start, 1), log=str(log))
