"""The installed plugin's first start (issue 13, part 1): `bin/trainguard-mcp` with no `.venv`
beside it and no TRAINGUARD_SERVER_PYTHON builds the server's environment in the plugin's
data folder from the real package index, once per dependency list, safely when two sessions
start at once, and says in one line what to do when it cannot.

Each test runs the real launcher and bootstrap with this machine's own Python 3.11+ (not the
test venv), real uv and pip, a throw-away HOME and data folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from conftest import CLEAN_PATH, TLS_ENV, plugin_copy

SYSTEM_PYTHON = shutil.which("python3", path=CLEAN_PATH)  # the machine's own, not the test venv's


def clean_env(home: Path, data: Path, **extra: str) -> dict[str, str]:
    """What a fresh user's session gives the launcher: no venv, no server python, a new HOME."""
    env = {"PATH": CLEAN_PATH, "HOME": str(home), "LANG": "C.UTF-8", "CLAUDE_PLUGIN_DATA": str(data)}
    env.update({k: v for k, v in os.environ.items() if k in TLS_ENV})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory) -> Path:
    """One uv cache for the module's builds: the first downloads, the rest are quick."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture
def plugin(tmp_path) -> Path:
    return plugin_copy(tmp_path / "plugin")


def bootstrap(plugin: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEM_PYTHON, str(plugin / "bin" / "trainguard-bootstrap"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def builds(data: Path) -> list[str]:
    log = data / "bootstrap.log"
    return [line for line in log.read_text().splitlines() if " built " in line] if log.exists() else []


def test_the_first_start_builds_the_environment_once_and_the_launcher_serves_from_it(plugin, tmp_path, uv_cache):
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    env = clean_env(home, data, UV_CACHE_DIR=str(uv_cache))
    t0 = time.monotonic()
    first = bootstrap(plugin, env, "--wait", "25")
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    python = Path(first.stdout.strip())
    assert python.parent.parent.parent == data / "envs" and python.exists()
    assert len(builds(data)) == 1 and not list((data / "envs").glob(".build-*"))
    site = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    assert (site / "mcp").is_dir() and not (site / "torch").exists()  # the server's packages, never torch
    t0 = time.monotonic()
    again = bootstrap(plugin, env)
    assert again.returncode == 0 and Path(again.stdout.strip()) == python and len(builds(data)) == 1
    print(f"\nfirst start built the environment in {first_s:.1f} s; a second start took {time.monotonic() - t0:.2f} s")

    async def serve(env):
        params = StdioServerParameters(
            command=str(plugin / "bin" / "trainguard-mcp"),
            args=[],
            env=env | {"CLAUDE_PROJECT_DIR": str(tmp_path)},
            cwd="/",
        )
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
            listed = await client.call_tool("list_experiments", {})
            return {t.name for t in tools}, listed

    hook = subprocess.run(
        [str(plugin / "bin" / "trainguard-mcp"), "--setup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert hook.returncode == 0 and hook.stdout == ""  # the SessionStart hook: silent when ready
    names, listed = anyio.run(serve, env)
    assert {"preflight", "launch_run", "list_runs"} <= names and not listed.is_error
    assert listed.structured_content["total"] >= 12  # the bundled experiments travel with the plugin
    # Once built, the launcher starts the server by the bootstrap's shortcut, without running
    # the bootstrap: it serves with no Python on PATH at all.
    shell_only = tmp_path / "shell-only"
    shell_only.mkdir()
    for name in ("sh", "sha256sum", "cut", "cat", "dirname"):
        (shell_only / name).symlink_to(shutil.which(name))
    names, listed = anyio.run(serve, env | {"PATH": str(shell_only)})
    assert "preflight" in names and not listed.is_error


def test_a_changed_dependency_list_builds_a_new_environment_and_keeps_the_last(plugin, tmp_path, uv_cache):
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    env = clean_env(home, data, UV_CACHE_DIR=str(uv_cache))
    old = bootstrap(plugin, env)
    assert old.returncode == 0, old.stderr
    pyproject = plugin / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('    "orjson>=3.9",', '    "orjson>=3.9",\n    "six>=1.16",'))
    new = bootstrap(plugin, env)
    assert new.returncode == 0, new.stderr
    assert new.stdout != old.stdout and len(builds(data)) == 2
    digest = hashlib.sha256(pyproject.read_bytes()).hexdigest()[:16]  # the launcher's shortcut follows
    assert (data / "envs" / f".launch-{digest}").read_text().strip() == Path(new.stdout.strip()).parent.parent.name
    assert Path(old.stdout.strip()).exists()  # a server started before the update may still run from it
    check = subprocess.run([new.stdout.strip(), "-c", "import six"], capture_output=True, check=False)
    assert check.returncode == 0


def test_two_sessions_starting_at_once_build_one_environment(plugin, tmp_path, uv_cache):
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    env = clean_env(home, data, UV_CACHE_DIR=str(uv_cache))
    argv = [SYSTEM_PYTHON, str(plugin / "bin" / "trainguard-bootstrap"), "--wait", "600"]
    both = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and len(builds(data)) == 1


def test_an_unreachable_index_gives_one_clear_line_and_no_half_built_environment(plugin, tmp_path):
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    dead = "http://127.0.0.1:9/simple"
    env = clean_env(
        home,
        data,
        UV_CACHE_DIR=str(tmp_path / "empty-cache"),
        UV_INDEX_URL=dead,
        UV_DEFAULT_INDEX=dead,
        PIP_INDEX_URL=dead,
        PIP_CONFIG_FILE=os.devnull,
        PIP_FIND_LINKS="",
        PIP_RETRIES="0",
        PIP_DEFAULT_TIMEOUT="5",
    )
    out = bootstrap(plugin, env, timeout=300)
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and "--setup" in lines[0], out.stderr
    assert not [p for p in (data / "envs").iterdir()]  # nothing built, nothing half-built
    hook = subprocess.run(
        [str(plugin / "bin" / "trainguard-mcp"), "--setup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert hook.returncode == 0 and "not reachable" in json.loads(hook.stdout)["systemMessage"]
    served = subprocess.run(
        [str(plugin / "bin" / "trainguard-mcp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert served.returncode != 0 and served.stdout == "" and "not reachable" in served.stderr  # stdout: the wire
