"""torch for the trainers on request (issue 13, part 2): on a machine whose server has no torch
for the trainers, pre-flight's fix names install_torch; after it, a bundled experiment trains
with the environment it made. A project's own venv is never changed unasked.

The install is real (pip into a fresh venv). The CPU wheel comes from pip's own configuration
on this machine (TRAINGUARD_TORCH_INDEX="" and the pinned TRAINGUARD_TORCH_SPEC that
scripts/setup uses), since PyTorch's index is not reachable here; the trainers' other packages
come from the package index."""

from __future__ import annotations

import fcntl
import json
import socket
import subprocess
import sys
import threading

import psutil
import pytest
from anyio.from_thread import start_blocking_portal
from mcp import Client

from conftest import REPO, TINY_TRM, error, make_venv, ok, wait_until


def test_install_torch_makes_the_trainers_environment_and_a_bundled_experiment_trains_with_it(
    project, tmp_path, monkeypatch
):
    data = tmp_path / "plugin-data"
    monkeypatch.setenv("CLAUDE_PLUGIN_DATA", str(data))
    monkeypatch.setenv("TRAINGUARD_TORCH_INDEX", "")
    monkeypatch.setenv("TRAINGUARD_TORCH_SPEC", "torch==2.13.0")
    no_torch = tmp_path / "server-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(no_torch)], check=True)
    monkeypatch.setenv("TRAINGUARD_PYTHON", str(no_torch / "bin" / "python"))  # a fresh machine: nothing has torch
    check = next(c for c in ok("preflight", {"experiment": "1"})["checks"] if c["name"] == "torch")
    assert check["verdict"] == "fail" and "install_torch(" in check["fix"] and "Ask the user" in check["fix"]

    monkeypatch.delenv("TRAINGUARD_PYTHON")
    installed = ok("install_torch", {"build": "cpu"})
    assert installed["target"] == "plugin" and installed["torch"].startswith("2.13.0")
    assert installed["python"] == str(data / "trainers" / "bin" / "python")
    report = ok("preflight", {"experiment": "1"})
    assert report["python"] == installed["python"]
    assert next(c for c in report["checks"] if c["name"] == "torch")["verdict"] == "pass"

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CLAUDE_PROJECT_DIR": str(project),
        "CLAUDE_PLUGIN_DATA": str(data),
        "TRAINGUARD_CPU_SLOTS": "4",
    }
    sets = [f"--set={k}={v}" for k, v in TINY_TRM.items()]
    out = subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", "train", "1", *sets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0 and ": succeeded" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    runs = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mcp_server.cli", "runs", "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["runs"]
    manifest = json.loads((project / "runs" / runs[0]["run_id"] / "manifest.json").read_text())
    assert manifest["argv"][0] == installed["python"]  # the trainer ran with the environment install_torch made


def test_a_project_venv_is_never_changed_unasked(project, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_PLUGIN_DATA", str(tmp_path / "plugin-data"))
    make_venv(project / ".venv")
    before = sorted(p.name for p in (project / ".venv").rglob("*"))
    text = error("install_torch", {"build": "cpu"})
    assert "does not change it unasked" in text and "target='project'" in text
    assert sorted(p.name for p in (project / ".venv").rglob("*")) == before
    assert not (tmp_path / "plugin-data" / "trainers").exists()


@pytest.fixture
def silent_index():
    """A package index that accepts connections and never answers: pip waits on it."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_cancelled_install_stops_its_pip_and_releases_the_install(project, tmp_path, monkeypatch, silent_index):
    from mcp_server.server import mcp

    data = tmp_path / "plugin-data"
    monkeypatch.setenv("CLAUDE_PLUGIN_DATA", str(data))
    monkeypatch.setenv("TRAINGUARD_TORCH_INDEX", silent_index)
    monkeypatch.setenv("PIP_FIND_LINKS", "")  # only the silent index: nothing answers pip
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "600")

    def pip_pids() -> list[int]:
        found = []
        for proc in psutil.Process().children(recursive=True):
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:  # gone, or a zombie not yet reaped
                continue
            if "pip" in cmdline and silent_index in cmdline:
                found.append(proc.pid)
        return found

    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(mcp)) as client:
        call = portal.start_task_soon(client.call_tool, "install_torch", {"build": "cpu"})
        wait_until(pip_pids, 60, "pip to wait on the index")
        [pid] = pip_pids()
        busy = portal.call(client.call_tool, "install_torch", {"build": "cpu"})
        assert busy.is_error and "being installed by another call" in busy.content[0].text
        call.cancel()
        wait_until(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
            15,
            "the cancelled install's pip to end",
        )
    assert not (data / "trainers" / ".torch-ready").exists()
    with open(data / "install-torch.lock", "a") as lock:  # released: the next call may install
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
