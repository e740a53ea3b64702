"""torch for the trainers, installed on request: the environment the bundled trainers run in
when nothing else has torch.

The server never needs torch (it must start in seconds), so an installed plugin has none. On
request (`install_torch`, `trainguard install-torch`), this makes `<plugin data>/trainers`, a
venv with torch and what the bundled trainers import (pyproject's `train` extra), and trainers
then run with it (`preflight.trainer_python`). A project's own `.venv` is preferred and never
modified unless asked (`target="project"`). It takes minutes and, for a CUDA or ROCm build,
gigabytes: agents ask the user first.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from mcp_server import paths, procs, safefiles
from mcp_server.errors import Conflict, InvalidInput, TrainguardError
from mcp_server.textlog import tail

Build = Literal["cpu", "cuda", "rocm"]
Target = Literal["auto", "plugin", "project"]
# Where each build of torch comes from: PyTorch's own indexes for CPU and ROCm; on Linux the
# default torch on PyPI is the CUDA build. TRAINGUARD_TORCH_INDEX overrides ("" = pip's own
# configuration), TRAINGUARD_TORCH_SPEC the requirement (default "torch").
INDEXES: dict[str, str | None] = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": None,
    "rocm": "https://download.pytorch.org/whl/rocm6.4",
}
STEP_TIMEOUT_S = 3600
POLL_S = 0.25  # how often a step checks for a cancel


class TorchInstall(BaseModel):
    """What `install_torch` did."""

    target: str  # "plugin" (trainguard's trainers environment) or "project" (the project's .venv)
    python: str
    build: str
    torch: str | None  # the version that imports now
    seconds: float
    log: str
    next_step: str


def env_dir() -> Path:
    return paths.plugin_data() / "trainers"


def python() -> str | None:
    """The trainers environment's interpreter, once `install_torch` made it."""
    candidate = env_dir() / "bin" / "python"
    return str(candidate) if (env_dir() / ".torch-ready").exists() and candidate.exists() else None


def _project_venv(project: Path) -> Path | None:
    venv = project / ".venv"
    return venv if (venv / "pyvenv.cfg").is_file() and (venv / "bin" / "python").exists() else None


_TRAIN_MARKER = re.compile(r"""extra\s*==\s*["']train["']""")


def _train_extra() -> list[str]:
    """The bundled trainers' packages (pyproject's `train` extra), torch itself left out: from
    pyproject.toml in a checkout, from the installed distribution's metadata for a wheel."""
    if paths.SOURCE_TREE:
        with (paths.PLUGIN_ROOT / "pyproject.toml").open("rb") as fh:
            extra = tomllib.load(fh)["project"]["optional-dependencies"]["train"]
    else:
        extra = []
        for req in importlib.metadata.requires("trainguard") or []:
            spec, _, marker = req.partition(";")
            if _TRAIN_MARKER.fullmatch(marker.strip()):
                extra.append(spec.strip())
    return [req for req in extra if not req.replace(" ", "").startswith("torch")]


def install_torch(
    build: Build = "cpu", target: Target = "auto", project: Path | None = None, cancel: threading.Event | None = None
) -> TorchInstall:
    """Install torch (of `build`) and the trainers' packages for the trainers to use. Setting
    `cancel` stops the step under way (its process group is killed) and raises.

    Raises:
        Conflict: `target="auto"` and the project has a venv (it is not modified unasked), or
            another install is under way.
        TrainguardError: an install step failed (the message holds the end of its log).
    """
    if build not in INDEXES:
        raise InvalidInput(f"build {build!r} is not one of {sorted(INDEXES)}.")
    project = project or paths.project_root()
    venv = _project_venv(project)
    if target == "auto" and venv is not None:
        raise Conflict(
            f"the project has its own venv ({venv}): trainguard does not change it unasked. Pass "
            "target='project' to install torch into it, or target='plugin' for trainguard's own "
            "trainers environment (then leave the experiments' `python` unset)."
        )
    if target == "project" and venv is None:
        raise InvalidInput(f"the project has no venv at {project / '.venv'}; pass target='plugin' (or 'auto').")
    where = venv if target == "project" else env_dir()
    data = paths.plugin_data()
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"install-torch-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    started = time.monotonic()
    with safefiles.open_append(data / "install-torch.lock") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict("torch is being installed by another call; wait for it, then run preflight.") from None
        if target != "project":
            (where / ".torch-ready").unlink(missing_ok=True)
            if not (where / "bin" / "python").exists():
                base = getattr(sys, "_base_executable", sys.executable)  # a venv of the server's own Python
                _step([base, "-m", "venv", str(where)], log, "making the trainers' venv", cancel)
        py = str(where / "bin" / "python")
        index = os.environ.get("TRAINGUARD_TORCH_INDEX", INDEXES[build] or "")
        spec = os.environ.get("TRAINGUARD_TORCH_SPEC", "torch")
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
        _step([*pip, *(["--index-url", index] if index else []), spec], log, f"installing torch ({build})", cancel)
        _step([*pip, *_train_extra()], log, "installing the trainers' packages", cancel)
        from mcp_server.preflight import probe_torch  # preflight imports this module

        info = probe_torch(py)
        if "torch" not in info:
            raise TrainguardError(
                f"torch was installed into {py} but does not import: "
                f"{info.get('torch_error') or info.get('interpreter_error')}; see {log}."
            )
        if target != "project":
            (where / ".torch-ready").write_text(info["torch"] + "\n")
    return TorchInstall(
        target="project" if target == "project" else "plugin",
        python=py,
        build=build,
        torch=info["torch"],
        seconds=round(time.monotonic() - started, 1),
        log=str(log),
        next_step="Run preflight again: the trainers now use this interpreter"
        + (
            " (set the experiments' python = \".venv/bin/python\" to use the project's venv)."
            if target == "project"
            else "."
        ),
    )


def _wait(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


async def install_torch_async(
    build: Build = "cpu", target: Target = "auto", project: Path | None = None
) -> TorchInstall:
    """`install_torch` for an event loop (the MCP tool): it runs on a thread of its own, and a
    cancelled call stops its step and waits until nothing of it is left.

    Raises:
        as `install_torch`.
    """
    cancel, finished = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = install_torch(build, target, project, cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    # Its own thread, alive for the whole install: the steps' death signal is tied to it.
    threading.Thread(target=work, name="install-torch", daemon=True).start()
    try:
        while not finished.is_set():
            await anyio.sleep(POLL_S)
    except anyio.get_cancelled_exc_class():
        cancel.set()
        with anyio.CancelScope(shield=True):
            while not finished.is_set():
                await anyio.sleep(POLL_S)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _step(argv: list[str], log: Path, what: str, cancel: threading.Event | None = None) -> None:
    """One install step, leashed to this thread (it ends if the server does), output to the log;
    stopped when it outlasts STEP_TIMEOUT_S or `cancel` is set."""
    with safefiles.open_append(log) as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            procs.leashed(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True, close_fds=True
        )
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while (code := _wait(proc, POLL_S)) is None:
            stop = (
                f"{what} was cancelled"
                if cancel is not None and cancel.is_set()
                else f"{what} took over {STEP_TIMEOUT_S} s and was stopped"
                if time.monotonic() > deadline
                else None
            )
            if stop:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child, not yet reaped: its group is its own
                proc.wait()
                raise TrainguardError(f"{stop}; nothing is marked ready, run install_torch again. Log: {log}.")
    if code != 0:
        raise TrainguardError(f"{what} failed (exit code {code}); end of {log}:\n{tail(log, lines=6, max_chars=800)}")
