"""How fast an installed plugin's server comes up (issue 13).

    .venv/bin/python bench/bench_startup.py [--skip-pip]

Prints: the first start with the bootstrap, by the uv path (uv fetched into the data folder
first, as on a machine without it) and by the venv + pip path; a warm start, from spawning
bin/trainguard-mcp to the MCP `initialize` answer (target <= 1.5 s); and the size of the data
folder's environment. Each start uses a fresh copy of the plugin and a fresh data folder, the
machine's own python3 and the real package index; uv's and pip's caches are fresh too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the package first (tests/mcp_server is not it), then test helpers
from conftest import CLEAN_PATH, TLS_ENV, plugin_copy  # noqa: E402


def fresh_env(tmp: Path, **extra: str) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": CLEAN_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CLAUDE_PLUGIN_DATA": str(tmp / "data"),
        "CLAUDE_PROJECT_DIR": str(tmp),
        "UV_CACHE_DIR": str(tmp / "uv-cache"),
        "PIP_CACHE_DIR": str(tmp / "pip-cache"),
    }
    env.update({k: v for k, v in os.environ.items() if k in TLS_ENV})
    env.update(extra)
    return env


def first_start(tmp: Path, **extra: str) -> tuple[float, Path]:
    plugin = plugin_copy(tmp / "plugin")
    env = fresh_env(tmp, **extra)
    t0 = time.perf_counter()
    out = subprocess.run(
        [shutil.which("python3", path=CLEAN_PATH), str(plugin / "bin" / "trainguard-bootstrap")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - t0, Path(out.stdout.strip())


def warm_start(tmp: Path) -> float:
    plugin = tmp / "plugin"
    params = StdioServerParameters(command=str(plugin / "bin" / "trainguard-mcp"), args=[], env=fresh_env(tmp), cwd="/")

    async def once() -> float:
        t0 = time.perf_counter()
        async with Client(params):
            return time.perf_counter() - t0

    return min(anyio.run(once) for _ in range(3))


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-pip", action="store_true", help="measure the uv path only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "uv"
        tmp.mkdir()
        seconds, python = first_start(tmp)
        print(f"first start, uv path (uv fetched too): {seconds:.1f} s")
        print(f"warm start to the initialize answer:   {warm_start(tmp):.2f} s (target <= 1.5 s)")
        print(
            f"environment in the data folder:        {size(python.parent.parent) / 2**20:.0f} MiB "
            f"({python.parent.parent})"
        )
        if not args.skip_pip:
            tmp = Path(d) / "pip"
            tmp.mkdir()
            seconds, _ = first_start(tmp, TRAINGUARD_BOOTSTRAP_PIP="1")
            print(f"first start, venv + pip path:          {seconds:.1f} s")


if __name__ == "__main__":
    main()
