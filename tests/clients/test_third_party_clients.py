"""Clients nobody here wrote, pinned in tests/clients/package.json (installed by
`scripts/setup --dev`): the Claude Code CLI and the MCP Inspector CLI, each with a throw-away
HOME so nothing touches a real configuration."""

import json
import os
import subprocess
import sys
import zipfile
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
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )


def test_claude_validates_the_plugin_strictly(home, project):
    out = run([tool("claude"), "plugin", "validate", str(REPO), "--strict", "--json"], home, project)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["success"] is True
    provides = report["provides"]
    assert [s["name"] for s in provides["mcpServers"]] == ["trainguard"]
    assert sorted(provides["skills"]) == ["trainguard:handoff", "trainguard:sweep", "trainguard:train"]
    assert provides["agents"] == ["trainguard:training-runner"]
    assert [(h["event"], h["command"]) for h in provides["hooks"]] == [
        ("SessionStart", '"${CLAUDE_PLUGIN_ROOT}/bin/trainguard-mcp" --setup')
    ]  # builds the server's environment
    manifest = run(
        [tool("claude"), "plugin", "validate", str(REPO / ".claude-plugin" / "plugin.json"), "--strict"], home, project
    )
    assert manifest.returncode == 0, manifest.stdout + manifest.stderr


def test_claude_connects_to_the_server_from_the_plugin_dir(home, project):
    out = run([tool("claude"), "--plugin-dir", str(REPO), "mcp", "list"], home, project)
    assert "plugin:trainguard:trainguard" in out.stdout and "Connected" in out.stdout, out.stdout + out.stderr


def marketplace_source(kind: str, tmp_path: Path, home: Path) -> str:
    """The plugin's tracked files as a marketplace: a folder, or a git repository behind the https
    URL a user would type (the fresh HOME's git config maps that URL onto a local bare repository,
    so `claude` runs a real `git clone` of it)."""
    copy = plugin_copy(tmp_path / "market")
    if kind == "path":
        return str(copy)
    git = ["git", "-c", "user.name=trainguard tests", "-c", "user.email=tests@trainguard.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "trainguard"], cwd=copy, check=True)
    bare = tmp_path / "trainguard.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(copy), str(bare)], check=True)
    url = "https://git.trainguard.invalid/trainguard.git"  # .invalid never resolves: only the mapping reaches it
    (home / ".gitconfig").write_text(f'[url "{bare.as_uri()}"]\n\tinsteadOf = {url}\n')
    return url


@pytest.mark.parametrize("source", ["path", "git"])
def test_claude_installs_the_plugin_from_its_marketplace_and_connects(home, project, tmp_path, source):
    """As a new user: the tracked files as the marketplace (a folder, or a git repository), a fresh
    HOME, the machine's python3 (no mcp in it), no TRAINGUARD_SERVER_PYTHON. The first start builds
    the server's environment in the plugin's data folder (bin/trainguard-bootstrap) within the time
    Claude Code gives a server; the second reuses it."""
    fresh = {k: v for k, v in home.items() if k != "TRAINGUARD_SERVER_PYTHON"} | {"PATH": f"{BIN}:{CLEAN_PATH}"}
    fresh.update({k: v for k, v in os.environ.items() if k in TLS_ENV})
    where = marketplace_source(source, tmp_path, Path(fresh["HOME"]))
    added = run([tool("claude"), "plugin", "marketplace", "add", where], fresh, project)
    assert added.returncode == 0, added.stdout + added.stderr
    installed = run([tool("claude"), "plugin", "install", "trainguard@trainguard"], fresh, project)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    out = run([tool("claude"), "mcp", "list"], fresh, project)
    assert "plugin:trainguard:trainguard" in out.stdout and "Connected" in out.stdout, out.stdout + out.stderr
    envs = list(Path(fresh["HOME"]).rglob("envs/*/.trainguard-ready"))
    assert len(envs) == 1, "the environment was built once, in the plugin's data folder"
    again = run([tool("claude"), "mcp", "list"], fresh, project)
    assert "Connected" in again.stdout and list(Path(fresh["HOME"]).rglob("envs/*/.trainguard-ready")) == envs


def inspector(home, project, *args):
    argv = [
        tool("mcp-inspector"),
        "--cli",
        str(REPO / "bin" / "trainguard-mcp"),
        "-e",
        f"CLAUDE_PROJECT_DIR={project}",
        "-e",
        f"TRAINGUARD_SERVER_PYTHON={sys.executable}",
        *args,
    ]
    return run(argv, home, project)


def test_inspector_lists_the_tools(home, project):
    out = inspector(home, project, "--method", "tools/list")
    assert out.returncode == 0, out.stderr
    tools = {t["name"]: t for t in json.loads(out.stdout)["tools"]}
    snapshot = json.loads((REPO / "tests" / "mcp_server" / "tools_snapshot.json").read_text())
    assert set(tools) == {t["name"] for t in snapshot}  # the tool surface, as test_tool_surface pins it
    assert tools["stop_run"]["annotations"]["destructiveHint"] is True
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


# From a package, for any MCP client: the wheel, and the `uvx` launch line README gives.


def inspector_call(command: list[str], env: dict[str, str], project: Path, tool_name: str, *args: str) -> dict:
    # The Inspector starts the server with a minimal environment of its own plus its -e pairs.
    passed = [arg for key in ("UV_SYSTEM_CERTS", *TLS_ENV) if key in env for arg in ("-e", f"{key}={env[key]}")]
    out = run(
        [tool("mcp-inspector"), "--cli", *command, *passed, "--method", "tools/call", "--tool-name", tool_name, *args],
        env,
        project,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result.get("isError") in (None, False), result
    return result["structuredContent"]


def assert_serves_the_bundled_files(command: list[str], env: dict[str, str], project: Path) -> None:
    """The package carries what the server needs at run time: the bundled experiments (listed)
    and the trainer specs (pre-flight resolves experiment 1's trainer and its parameters)."""
    page = inspector_call(command, env, project, "list_experiments")
    assert page["total"] == 12 and {e["source"] for e in page["experiments"]} == {"bundled"}, page
    assert page["experiments"][0]["id"] == "001-trm-fast-dev" and page["experiments"][0]["trainer"] == "trm_nav"
    report = inspector_call(command, env, project, "preflight", "--tool-arg", "experiment=1")
    checks = {c["name"]: c for c in report["checks"]}
    assert report["experiment"] == "001-trm-fast-dev" and checks["parameters"]["verdict"] == "pass", report
    # A clean environment has no torch: the fix is the install_torch tool, not a dead end.
    assert checks["torch"]["verdict"] == "fail" and "install_torch" in checks["torch"]["fix"], checks["torch"]


@pytest.fixture
def clean_env(home):
    """A client's environment on a machine with nothing of ours: a fresh HOME, no server python."""
    env = {k: v for k, v in home.items() if k not in ("TRAINGUARD_SERVER_PYTHON", "CLAUDE_PROJECT_DIR")}
    env["PATH"] = f"{BIN}:{CLEAN_PATH}"
    return env | {k: v for k, v in os.environ.items() if k in TLS_ENV}


def test_the_wheel_installs_in_a_clean_venv_and_serves_the_inspector(clean_env, project, tmp_path):
    source = plugin_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    built = run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], clean_env, source, timeout=300
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = dist.glob("trainguard-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "app.css"):  # the dashboard's page
        assert f"mcp_server/dashboard/static/{name}" in shipped
    assert {"mcp_server/sweeps/driver.py", "mcp_server/bundled_experiments/001-trm-fast-dev/sweep.toml"} <= shipped
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], clean_env, tmp_path, timeout=600
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert_serves_the_bundled_files(
        [str(venv / "bin" / "trainguard"), "serve", "--project", str(project)], clean_env, project
    )


def test_uvx_serves_it_from_a_git_url(clean_env, project, tmp_path):
    """README's launch line for other clients, `uvx --from git+URL trainguard serve --project DIR`:
    uv clones the repository (a local bare one behind the URL), builds and runs it."""
    url = marketplace_source("git", tmp_path, Path(clean_env["HOME"]))
    env = clean_env | {"UV_SYSTEM_CERTS": "1", "UV_PYTHON_DOWNLOADS": "never"}
    uvx = Path(sys.executable).parent / "uvx"
    assert uvx.exists(), "uv is a dev dependency: run `scripts/setup --dev`"
    command = [
        str(uvx),
        "--python",
        sys.executable,
        "--from",
        f"git+{url}",
        "trainguard",
        "serve",
        "--project",
        str(project),
    ]
    # As README says: the first start builds (it can outlast a client's connect timeout), so run
    # the line once in a terminal; from then on it starts from uv's cache.
    first = run([*command[:-3], "--help"], env, project, timeout=600)
    assert first.returncode == 0 and "serve" in first.stdout, first.stdout + first.stderr
    assert_serves_the_bundled_files(command, env, project)
