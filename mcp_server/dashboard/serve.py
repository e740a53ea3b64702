"""Starting, finding and stopping a project's dashboard: one per project, reused while it lives.

`open_dashboard` (the tool and `trainguard dashboard`) starts `python -m mcp_server.dashboard
PROJECT` in a session of its own, which binds 127.0.0.1 (a free port unless one is asked for),
makes a random token and writes `runs/.dashboard.json` (url, port, token, pid; mode 0600, the
token is a secret) once it listens. A second call finds that file, checks the process is the one
recorded (pid and start time) and answers, and returns the same URL. Each project has its own
file, so dashboards of several projects run side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
from pydantic import BaseModel

from mcp_server import paths, procs, safefiles
from mcp_server.errors import InvalidInput, TrainguardError

log = logging.getLogger("trainguard.dashboard")
STATE_FILE = ".dashboard.json"
START_TIMEOUT_S = 20.0


class DashboardInfo(BaseModel):
    """`open_dashboard`: where it is."""

    url: str  # open it in a browser; it carries the token
    port: int
    pid: int
    reused: bool  # a running one was found
    project: str
    note: str


def _state_path(project: Path) -> Path:
    return paths.runs_root(project) / STATE_FILE


def _read_state(project: Path) -> dict | None:
    try:
        data = json.loads(safefiles.read_bytes(_state_path(project), follow_links=False, limit=64 * 1024))
    except (OSError, ValueError, TrainguardError):
        return None
    return data if isinstance(data, dict) else None


def _ours(state: dict, project: Path) -> bool:
    """The recorded process is this project's dashboard: pid, start time and its command line
    (the state file is a project file; it must not get another process signalled)."""
    if not procs.is_alive(state.get("pid"), state.get("started")):
        return False
    try:
        cmdline = psutil.Process(int(state["pid"])).cmdline()
    except (psutil.Error, ValueError, KeyError):
        return False
    return "mcp_server.dashboard" in cmdline and str(project) in cmdline


def _alive(state: dict, project: Path) -> bool:
    if not _ours(state, project):
        return False
    try:
        with socket.create_connection(("127.0.0.1", int(state["port"])), timeout=1.0):
            return True
    except (OSError, ValueError, KeyError):
        return False


def open_dashboard(project: Path | None = None, port: int | None = None) -> DashboardInfo:
    """The project's dashboard, started unless one runs.

    Raises:
        InvalidInput: a port out of range. TrainguardError: it did not start (its log's end says why).
    """
    project = project or paths.project_root()
    if port is not None and not 1024 <= port <= 65535:
        raise InvalidInput(f"port is {port}; pass 1024 to 65535, or none for a free one.")
    state = _read_state(project)
    if state is not None and _alive(state, project) and (port is None or int(state["port"]) == port):
        return _info(state, project, reused=True)
    if state is not None and _alive(state, project):
        raise InvalidInput(
            f"this project's dashboard already runs on port {state['port']}; open {state['url']}, "
            "or stop it (trainguard dashboard --stop) to start one on another port."
        )
    root = paths.runs_root(project)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainguardError(
            f"cannot make the runs folder {root} for the dashboard's state: {exc.strerror or exc}; "
            "check that it is writable, or set TRAINGUARD_RUNS_DIR."
        ) from None
    _forget(project)
    log_file = root / ".dashboard.log"
    proc = procs.start_detached(
        "mcp_server.dashboard",
        project,
        log_file,
        paths.PLUGIN_ROOT,
        paths.SOURCE_TREE,
        ["--port", str(port or 0)],
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _read_state(project)
        if state is not None and state.get("pid") == proc.pid:
            return _info(state, project, reused=False)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    from mcp_server import textlog

    raise TrainguardError(
        f"the dashboard did not start: {textlog.tail(log_file, lines=5, max_chars=600) or 'no output'}"
    )


def _info(state: dict, project: Path, reused: bool) -> DashboardInfo:
    return DashboardInfo(
        url=state["url"],
        port=int(state["port"]),
        pid=int(state["pid"]),
        reused=reused,
        project=str(project),
        note="Open the URL in a browser on this machine (it listens on 127.0.0.1 only and needs the token in it). "
        "It shows every run live, its curves, the GPUs, a comparison, and stop/resume buttons.",
    )


def close(project: Path | None = None) -> bool:
    """Stop the project's dashboard if one runs (only the process recorded, verified); True if one did."""
    project = project or paths.project_root()
    state = _read_state(project)
    if state is None or not _ours(state, project):
        _forget(project)
        return False
    os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while procs.is_alive(state.get("pid"), state.get("started")) and time.monotonic() < deadline:
        time.sleep(0.05)
    _forget(project)
    return True


def _forget(project: Path) -> None:
    """Remove the state file of a dashboard that no longer runs (a runs folder that is not one: nothing)."""
    with contextlib.suppress(OSError):
        _state_path(project).unlink(missing_ok=True)


def run(project: Path, port: int) -> int:
    """The dashboard process: bind, write the state file, serve until SIGTERM."""
    import asyncio

    import uvicorn

    from mcp_server.dashboard.app import make_app

    class Server(uvicorn.Server):
        """uvicorn's server, waking once a second instead of ten times (to refresh its Date header
        and see whether to exit): a dashboard nobody looks at costs next to nothing."""

        async def main_loop(self) -> None:
            ticks = 0
            while not await self.on_tick(ticks):  # on_tick refreshes the Date header when ticks % 10 == 0
                ticks = (ticks + 10) % 864_000
                await asyncio.sleep(1.0)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another --port", file=sys.stderr)
        return 1
    sock.listen(64)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}/?token={token}"
    config = uvicorn.Config(make_app(project, token, port), log_level="warning", access_log=False, lifespan="off")
    server = Server(config)
    safefiles.write_atomic(
        _state_path(project),
        json.dumps(
            {"url": url, "port": port, "token": token, "pid": os.getpid(), "started": procs.start_time(os.getpid())}
        ).encode(),
    )
    server.run(sockets=[sock])
    return 0
