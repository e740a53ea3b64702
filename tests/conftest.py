"""Shared fixtures: a throw-away user project with real experiments, and run clean-up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mcp import StdioServerParameters

from mcp_server import paths, runs
from mcp_server.dashboard import serve as dashboard
from mcp_server.errors import TrainguardError
from mcp_server.rundir import TERMINAL, all_runs
from mcp_server.sweeps import api as sweeps

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Small enough for a 2-core CI machine, big enough to learn something in a few epochs.
TINY_TRM = {"num_train": 300, "num_test": 60, "dim": 16, "depth": 1, "epochs": 3, "patience": 3, "device": "cpu"}


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll `predicate` every 50 ms until it returns something truthy; that value, or an AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def write_experiment(project: Path, name: str, trainer: str, args: dict, hypothesis: str | None = "It trains.") -> Path:
    """Create `experiments/<name>/` in `project` with experiment.toml and hypothesis.md."""
    folder = project / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'trainer = "{trainer}"', f'title = "test experiment {name}"', "", "[args]"]
    for key, value in args.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    (folder / "experiment.toml").write_text("\n".join(lines).replace("True", "true").replace("False", "false") + "\n")
    if hypothesis is not None:
        (folder / "hypothesis.md").write_text(hypothesis + "\n")
    return folder


def make_venv(where: Path) -> Path:
    """A real venv (its own interpreter and pyvenv.cfg) that imports this interpreter's packages,
    torch included, through a .pth file; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = next(where.glob("lib/python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "trainguard-test.pth").write_text("\n".join(ours) + "\n")
    return where / "bin" / "python"


SCRIPTED_SPEC = """
name = "scripted"
description = "A user's own script with scripted faults (tests)."
command = ["{python}", "{project_dir}/scripts/scripted_trainer.py"]
output_flag = "--out"
primary_metric = "val/acc"
primary_mode = "max"

[params.steps]
type = "int"
flag = "--steps"
default = 5
min = 1
help = "Steps to run."

[params.interval]
type = "float"
flag = "--interval"
default = 0.0
min = 0.0
help = "Seconds between steps."

[params.fail_at]
type = "int"
flag = "--fail-at"
default = -1
help = "Step at which to crash."

[params.nan_at]
type = "int"
flag = "--nan-at"
default = -1
help = "Step whose loss is NaN."

[params.hang_at]
type = "int"
flag = "--hang-at"
default = -1
help = "Step from which it stops logging and hangs."

[params.limit_as_mb]
type = "int"
flag = "--limit-as-mb"
default = 0
help = "Address-space limit (MB)."

[params.alloc_at]
type = "int"
flag = "--alloc-at"
default = -1
help = "Step at which it allocates alloc_mb."

[params.alloc_mb]
type = "int"
flag = "--alloc-mb"
default = 0
help = "MB to allocate."

[params.limit_fsize_mb]
type = "int"
flag = "--limit-fsize-mb"
default = 0
help = "File-size limit (MB)."

[params.write_at]
type = "int"
flag = "--write-at"
default = -1
help = "Step at which it writes write_mb to a file."

[params.write_mb]
type = "int"
flag = "--write-mb"
default = 0
help = "MB to write."

[params.ckpt_mb]
type = "int"
flag = "--ckpt-mb"
default = 0
help = "Size of the checkpoint written every step (MB)."

[params.malformed_at]
type = "int"
flag = "--malformed-at"
default = -1
help = "Step at which a malformed metrics line is written."
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty user project, made current through CLAUDE_PROJECT_DIR. Every sweep and run it
    started is stopped at teardown, so no test leaves a process behind."""
    proj = tmp_path / "project"
    proj.mkdir()
    monkeypatch.setenv("CLAUDE_PROJECT_DIR", str(proj))
    monkeypatch.delenv("TRAINGUARD_RUNS_DIR", raising=False)
    monkeypatch.setenv("TRAINGUARD_PYTHON", sys.executable)
    monkeypatch.setenv("TRAINGUARD_CPU_SLOTS", "16")  # tests run several small runs at once; test_queue sets 1
    yield proj
    dashboard.close(proj)
    for sweep in sweeps.sweepdir.all_sweeps(paths.runs_root(proj)):  # first: a driver launches more runs
        try:
            sweeps.stop_sweep(sweep.sweep_id, project=proj, wait_s=60.0)
        except TrainguardError:
            continue
    for run in all_runs(paths.runs_root(proj)):
        try:
            if runs.refresh(run).status not in TERMINAL:
                runs.stop(run.run_id, grace_s=1.0, project=proj)
        except TrainguardError:
            continue  # a folder a test damaged on purpose: nothing runs from it


@pytest.fixture
def scripted(project: Path) -> Path:
    """The project has the `scripted` trainer (a user's own script) and experiments 901-903."""
    scripts = project / "scripts"
    scripts.mkdir()
    shutil.copy(FIXTURES / "scripted_trainer.py", scripts)
    shutil.copy(REPO / "trainers" / "trainkit.py", scripts)
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "experiments" / "trainers" / "scripted.toml").write_text(textwrap.dedent(SCRIPTED_SPEC))
    write_experiment(project, "901-quick", "scripted", {"steps": 5})
    write_experiment(project, "902-hang", "scripted", {"steps": 100000, "interval": 0.05})
    write_experiment(project, "903-crash", "scripted", {"steps": 10, "fail_at": 3})
    return project


@pytest.fixture
def tiny_trm(project: Path) -> Path:
    """The project has 911-trm-tiny: the bundled TRM trainer with a budget of a few seconds."""
    write_experiment(project, "911-trm-tiny", "trm_nav", TINY_TRM)
    return project


# A new user's machine: PATH without this test venv, so `python3` is the machine's own.
CLEAN_PATH = os.pathsep.join(
    p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(Path(sys.executable).parent))
)
# The machine's TLS set-up (a network that inspects TLS has its CA there), which a fresh HOME keeps.
TLS_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT")


def plugin_copy(where: Path) -> Path:
    """The plugin's tracked files, elsewhere, as a marketplace install leaves them (no .venv, no tests)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if not name.startswith("tests/") and (REPO / name).is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, where / name)
    return where


def server_env(project: Path) -> dict[str, str]:
    """Environment for a server subprocess: a stdio client passes only a minimal one."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        CLAUDE_PROJECT_DIR=str(project),
        TRAINGUARD_PYTHON=sys.executable,
        PYTHONPATH=str(REPO),
        TRAINGUARD_CPU_SLOTS="16",
    )
    return env


# ---------------------------------------------------------------------------- MCP over stdio


def launcher_params(project: Path, **env: str) -> StdioServerParameters:
    """The plugin's launcher (bin/trainguard-mcp) as a stdio client starts it, for `project`."""
    full = server_env(project) | {"TRAINGUARD_SERVER_PYTHON": sys.executable} | env
    return StdioServerParameters(command=str(REPO / "bin" / "trainguard-mcp"), args=[], env=full, cwd="/")


async def call_ok(client, name: str, args: dict | None = None):
    """A tool call over a client session that must succeed: its structured content."""
    result = await client.call_tool(name, args or {})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def poll_status(client, run_id: str, until, timeout: float = 300.0, interval: float = 0.3):
    """run_status every `interval` until `until(status)` holds; that status, or an AssertionError."""
    import anyio

    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = await call_ok(client, "run_status", {"run_id": run_id})
        if until(st):
            return st
        await anyio.sleep(interval)
    raise AssertionError(f"run {run_id} never reached the condition; last status {st}")


# ---------------------------------------------------------------------------- in-memory MCP calls


def call(name: str, args: dict | None = None):
    """Call one tool of the server through an in-memory MCP client; the raw result."""
    import anyio
    from mcp import Client

    from mcp_server.server import mcp

    async def go():
        async with Client(mcp) as client:
            return await client.call_tool(name, args or {})

    return anyio.run(go)


def ok(name: str, args: dict | None = None):
    """A tool call that must succeed: its structured content."""
    result = call(name, args)
    assert not result.is_error, result.content[0].text
    return result.structured_content


def error(name: str, args: dict | None = None) -> str:
    """A tool call that must fail with a ToolError: its message."""
    result = call(name, args)
    assert result.is_error and result.structured_content is None
    return result.content[0].text
