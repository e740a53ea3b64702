"""`trainguard` as a person uses it: a real process, real runs."""

import json
import os
import subprocess
import sys

from conftest import REPO


def trainguard(project, *args, timeout=240):
    env = dict(os.environ, CLAUDE_PROJECT_DIR=str(project), TRAINGUARD_PYTHON=sys.executable)
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


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


def test_the_cli_has_every_tool_on_real_runs_and_files(scripted):
    """summary RUN|PATH, diagnose, compare, logs, wait, resume, watch, scratchpad, and --json on each."""
    ok_run = json.loads(trainguard(scripted, "train", "901", "--detach", "--json").stdout)["run_id"]
    bad_run = json.loads(trainguard(scripted, "train", "903", "--detach", "--json").stdout)["run_id"]

    waited = trainguard(scripted, "wait", ok_run, "--timeout", "60")
    assert waited.returncode == 0 and f"{ok_run}: succeeded" in waited.stdout and waited.stderr == ""  # no tty
    assert trainguard(scripted, "wait", bad_run, "--timeout", "60").returncode == 1

    summary = json.loads(trainguard(scripted, "summary", ok_run, "--json").stdout)
    assert summary["run"]["run_id"] == ok_run and summary["summary"]["primary_metric"] == "val/acc"
    logs = scripted / "mylogs"
    logs.mkdir()
    (logs / "train.log").write_text("".join(f"Epoch {i} - Loss: {1 / i:.4f}\n" for i in range(1, 30)))
    own = trainguard(scripted, "summary", "mylogs/train.log")
    assert own.returncode == 0 and "mylogs/train.log:" in own.stdout and "loss" in own.stdout
    assert trainguard(scripted, "summary", "../outside.log").returncode == 2

    diagnosed = trainguard(scripted, "diagnose", bad_run)
    assert (
        diagnosed.returncode == 0
        and "crash" in diagnosed.stdout
        and "RuntimeError: scripted failure" in (diagnosed.stdout)
    )
    assert json.loads(trainguard(scripted, "diagnose", bad_run, "--json").stdout)["failure_class"] == "crash"

    compared = json.loads(trainguard(scripted, "compare", ok_run, bad_run, "--baseline", "0.5", "--json").stdout)
    assert [r["run_id"] for r in compared["rows"]][0] == ok_run and compared["baseline_value"] == 0.5
    assert ok_run in trainguard(scripted, "compare", ok_run, bad_run).stdout

    tail = trainguard(scripted, "logs", bad_run, "--lines", "1")
    assert tail.stdout.strip() == "RuntimeError: scripted failure"
    picked = json.loads(
        trainguard(scripted, "logs", ok_run, "--stream", "stdout", "--pattern", "step [34] ", "--json").stdout
    )
    assert [line.split()[1] for line in picked["lines"]] == ["3", "4"]
    assert "not a valid regular expression" in trainguard(scripted, "logs", ok_run, "--pattern", "(").stderr

    resumed = trainguard(scripted, "resume", ok_run, "--json")
    assert resumed.returncode == 2 and "names no resume_checkpoint" in resumed.stderr

    watched = json.loads(trainguard(scripted, "watch", "--seconds", "0.3", "--interval", "0.2", "--json").stdout)
    assert watched["samples"] >= 1

    assert trainguard(scripted, "scratchpad", "--append", "val acc 0.9 at step 5", "--kind", "loss").returncode == 0
    pad = json.loads(trainguard(scripted, "scratchpad", "--json").stdout)
    assert (
        "[loss] val acc 0.9 at step 5" in pad["own_today"]["text"]
        and f"[launch] launched {ok_run}" in (pad["own_today"]["text"])
    )

    exps = json.loads(trainguard(scripted, "experiments", "--json").stdout)
    assert {"001-trm-fast-dev", "901-quick"} <= {e["id"] for e in exps}
    plotted = json.loads(trainguard(scripted, "plot", ok_run, "--json").stdout)
    assert plotted["path"].endswith("plot.png") and plotted["metrics"]


def test_train_takes_the_backend_and_its_resources(tiny_trm):
    out = trainguard(tiny_trm, "train", "911", "--backend", "torchrun", "--resource", "nproc=2", "--dry-run", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    argv = json.loads(out.stdout)["argv"]
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    bad = trainguard(tiny_trm, "preflight", "911", "--backend", "torchrun", "--resource", "nproc=lots")
    assert bad.returncode == 2 and "resources.nproc" in bad.stderr, bad.stdout + bad.stderr
