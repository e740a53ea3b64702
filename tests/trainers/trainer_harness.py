"""What the trainer tests share: starting a trainer as a subprocess, stopping it by signal,
reading its metrics stream and its checkpoints.

A plain module, not a conftest.py: conftest files outside packages are all imported as the
module ``conftest``, so a second one here would replace tests/conftest.py for every
``from conftest import ...`` collected after it. The trainer test files import this one by
name (pytest puts their folder on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def read_records(metrics: Path) -> list[dict]:
    """The complete lines of a metrics stream, parsed strictly: a bare NaN or Infinity fails the test."""

    def strict(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    if not metrics.exists():
        return []
    complete = metrics.read_text().split("\n")[:-1]  # a line still being written has no newline yet
    return [json.loads(line, parse_constant=strict) for line in complete]


def load_pt(path: Path) -> dict:
    """A checkpoint read as the trainers read one: plain data only (weights_only), so every
    test that opens a checkpoint also checks that it was saved loadable that way."""
    return torch.load(path, map_location="cpu", weights_only=True)


def spawn(trainer: Path, argv: list[str], metrics: Path, one_thread: bool = False) -> subprocess.Popen:
    """Starts ``python trainer *argv`` reporting to ``metrics``, outside any run folder, with
    stdout and stderr piped (as text) and stdin closed.

    Args:
        one_thread: Sets OMP_NUM_THREADS=1, for trainers whose tiny models only wait on threads.
    """
    env = {**os.environ, "TRAINGUARD_METRICS": str(metrics)}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    env.pop("TRAINGUARD_RUN_DIR", None)
    return subprocess.Popen(
        [sys.executable, str(trainer), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_when(
    proc: subprocess.Popen,
    metrics: Path,
    ready: Callable[[dict], bool],
    what: str,
    signum: int = signal.SIGTERM,
    within_s: float = 90.0,
) -> tuple[str, str]:
    """Sends ``signum`` once a record satisfying ``ready`` is in the stream; returns the
    process's (stdout, stderr) after it exits. Fails if it exits first or nothing comes
    ``within_s``; the process never outlives the call.
    """
    try:
        deadline = time.monotonic() + within_s
        while not any(ready(r) for r in read_records(metrics)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, f"no {what} within {within_s:g} s"
            time.sleep(0.05)
        proc.send_signal(signum)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def one_torch_thread():
    """One torch thread in this process: tiny models gain nothing from threads, and on a busy
    machine every parallel region waits for a free core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
