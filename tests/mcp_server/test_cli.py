"""`trainguard` as a person uses it: a real process, real runs."""

import json
import os
import subprocess
import sys

from conftest import REPO


def trainguard(project, *args, timeout=240):
    env = dict(os.environ, CLAUDE_PROJECT_DIR=str(project), TRAINGUARD_PYTHON=sys.executable)
    return subprocess.run([sys.executable, "-m", "mcp_server.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def test_train_follows_a_real_run_and_prints_its_summary(tiny_trm):
    out = trainguard(tiny_trm, "train", "911")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ok  ] torch:" in out.stdout and "Launched 911-trm-tiny-" in out.stdout
    assert "Epoch 1/3 - Train Loss:" in out.stdout
    assert ": succeeded" in out.stdout and "best val/acc" in out.stdout and "ended: " in out.stdout
    runs = json.loads(trainguard(tiny_trm, "runs", "--json").stdout)["runs"]
    assert [r["status"] for r in runs] == ["succeeded"]


def test_a_failed_run_exits_non_zero_and_shows_the_end_of_stderr(scripted):
    out = trainguard(scripted, "train", "903")
    assert out.returncode == 1 and ": failed (exited with code 1)" in out.stdout
    assert "RuntimeError: scripted failure" in out.stdout


def test_bad_input_exits_2_with_the_fix(scripted):
    out = trainguard(scripted, "preflight", "1", "--set", "dim=big")
    assert out.returncode == 2 and "'dim' takes an int" in out.stderr and out.stdout == ""
    out = trainguard(scripted, "status", "nope")
    assert out.returncode == 2 and "call list_runs" in out.stderr


def test_detach_then_stop(scripted):
    out = trainguard(scripted, "train", "902", "--detach", "--json")
    run_id = json.loads(out.stdout)["run_id"]
    stopped = json.loads(trainguard(scripted, "stop", run_id, "--json").stdout)
    assert stopped["status"] == "stopped" and stopped["processes_left"] == 0
