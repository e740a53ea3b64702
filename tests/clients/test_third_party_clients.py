"""Clients nobody here wrote, pinned in tests/clients/package.json (installed by
`scripts/setup --dev`): the Claude Code CLI and the MCP Inspector CLI, each with a throw-away
HOME so nothing touches a real configuration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLEAN_PATH, REPO, TLS_ENV, plugin_copy

pytestmark = pytest.mark.clients
BIN = Path(__file__).resolve().parent / "node_modules" / ".bin"


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `scripts/setup --dev` (it runs npm ci in tests/clients).")
    return str(path)


@pytest.fixture
def home(tmp_path, project):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    env.update(HOME=str(home), CLAUDE_PROJECT_DIR=str(project), TRAINGUARD_SERVER_PYTHON=sys.executable)
    return env


def run(argv, env, cwd, timeout=120):
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def test_claude_validates_the_plugin_strictly(home, project):
    out = run([tool("claude"), "plugin", "validate", str(REPO), "--strict", "--json"], home, project)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["success"] is True
    provides = report["provides"]
    assert [s["name"] for s in provides["mcpServers"]] == ["trainguard"]
    assert provides["skills"] == ["trainguard:train"] and provides["agents"] == ["trainguard:training-runner"]
    assert [(h["event"], h["command"]) for h in provides["hooks"]] == [
        ("SessionStart", '"${CLAUDE_PLUGIN_ROOT}/bin/trainguard-mcp" --setup')]  # builds the server's environment
    manifest = run([tool("claude"), "plugin", "validate", str(REPO / ".claude-plugin" / "plugin.json"), "--strict"],
                   home, project)
    assert manifest.returncode == 0, manifest.stdout + manifest.stderr


def test_claude_connects_to_the_server_from_the_plugin_dir(home, project):
    out = run([tool("claude"), "--plugin-dir", str(REPO), "mcp", "list"], home, project)
    assert "plugin:trainguard:trainguard" in out.stdout and "Connected" in out.stdout, out.stdout + out.stderr


def test_claude_installs_the_plugin_from_its_marketplace_and_connects(home, project, tmp_path):
    """As a new user: the tracked files as the marketplace, a fresh HOME, the machine's python3 (no
    mcp in it), no TRAINGUARD_SERVER_PYTHON. The first start builds the server's environment in the
    plugin's data folder (bin/trainguard-bootstrap) within the time Claude Code gives a server."""
    copy = plugin_copy(tmp_path / "market")
    fresh = {k: v for k, v in home.items() if k != "TRAINGUARD_SERVER_PYTHON"} | {"PATH": f"{BIN}:{CLEAN_PATH}"}
    fresh.update({k: v for k, v in os.environ.items() if k in TLS_ENV})
    assert run([tool("claude"), "plugin", "marketplace", "add", str(copy)], fresh, project).returncode == 0
    installed = run([tool("claude"), "plugin", "install", "trainguard@trainguard"], fresh, project)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    out = run([tool("claude"), "mcp", "list"], fresh, project)
    assert "plugin:trainguard:trainguard" in out.stdout and "Connected" in out.stdout, out.stdout + out.stderr
    envs = list(Path(fresh["HOME"]).rglob("envs/*/.trainguard-ready"))
    assert len(envs) == 1, "the environment was built once, in the plugin's data folder"
    again = run([tool("claude"), "mcp", "list"], fresh, project)
    assert "Connected" in again.stdout and list(Path(fresh["HOME"]).rglob("envs/*/.trainguard-ready")) == envs


def inspector(home, project, *args):
    argv = [tool("mcp-inspector"), "--cli", str(REPO / "bin" / "trainguard-mcp"),
            "-e", f"CLAUDE_PROJECT_DIR={project}", "-e", f"TRAINGUARD_SERVER_PYTHON={sys.executable}", *args]
    return run(argv, home, project)


def test_inspector_lists_the_tools(home, project):
    out = inspector(home, project, "--method", "tools/list")
    assert out.returncode == 0, out.stderr
    tools = {t["name"]: t for t in json.loads(out.stdout)["tools"]}
    assert len(tools) == 20 and tools["stop_run"]["annotations"]["destructiveHint"] is True
    assert "outputSchema" in tools["preflight"]


def test_inspector_calls_preflight_and_gets_a_structured_result(home, project):
    out = inspector(home, project, "--method", "tools/call", "--tool-name", "preflight", "--tool-arg", "experiment=1")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result.get("isError") in (None, False)
    report = result["structuredContent"]
    assert report["experiment"] == "001-trm-fast-dev" and report["verdict"] in ("pass", "warn")
    assert {c["name"] for c in report["checks"]} >= {"experiment", "parameters", "torch", "device", "output"}


def test_inspector_sees_a_tool_error_for_an_unknown_experiment(home, project):
    out = inspector(home, project, "--method", "tools/call", "--tool-name", "preflight", "--tool-arg", "experiment=99")
    assert out.returncode != 0 and "no experiment '99'" in out.stdout + out.stderr
