"""Runs on a real Slurm (issue 14, part 3): a single-node cluster of Debian's slurmctld, slurmd
and munge, started by scripts/slurm-cluster, driven through the stdio MCP client as an agent
would. A 2-task DDP job trains; a job past its time limit saves its checkpoint, requeues and
finishes; stop_run leaves a checkpoint; a job held behind another is queued with Slurm's
reason; an unknown partition fails pre-flight; a restarted server finds its job.

Marked `slurm`. Where the daemons cannot start, the tests fail with the reason under CI and
are skipped elsewhere (a developer machine without Slurm)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import anyio
import psutil
import pytest
import torch
from mcp import Client

from conftest import FIXTURES, REPO, SCRIPTED_SPEC, TINY_TRM, launcher_params, poll_status, write_experiment
from conftest import call_ok as ok

pytestmark = pytest.mark.slurm
ENDING = ("starting", "queued", "running")


async def poll(client, run_id, until, timeout=240.0):
    return await poll_status(client, run_id, until, timeout, interval=0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a running single-node cluster, stopped at the end of the module."""
    where = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(REPO / "scripts" / "slurm-cluster"), "start", str(where)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if started.returncode != 0:
        reason = f"the Slurm daemons did not start: {started.stderr.strip()[-1500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    conf = started.stdout.strip().split("=", 1)[1]
    yield conf
    subprocess.run([str(REPO / "scripts" / "slurm-cluster"), "stop", str(where)], timeout=60, check=False)


@pytest.fixture
def slurm_project(project, cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", cluster)
    scripts = project / "scripts"
    scripts.mkdir()
    shutil.copy(FIXTURES / "scripted_trainer.py", scripts)
    shutil.copy(REPO / "trainers" / "trainkit.py", scripts)
    (project / "experiments" / "trainers").mkdir(parents=True)
    resumable = (
        textwrap.dedent(SCRIPTED_SPEC)
        .replace('name = "scripted"', 'name = "scripted_resume"')
        .replace(
            'primary_mode = "max"\n',
            'primary_mode = "max"\nresume_checkpoint = "last.json"\n\n'
            '[params.resume]\ntype = "path"\nflag = "--resume"\nmust_exist = true\n'
            'help = "A last.json: go on from it."\n',
        )
    )
    (project / "experiments" / "trainers" / "scripted_resume.toml").write_text(resumable)
    (project / "experiments" / "trainers" / "scripted.toml").write_text(textwrap.dedent(SCRIPTED_SPEC))
    yield project
    subprocess.run(
        ["scancel", "--user=" + (os.environ.get("USER") or "root")],
        env={**os.environ},
        timeout=30,
        check=False,
        capture_output=True,
    )


def test_a_two_task_ddp_job_trains_on_slurm_and_a_stop_leaves_a_checkpoint(slurm_project, cluster):
    write_experiment(slurm_project, "931-trm-slurm", "trm_nav", TINY_TRM | {"batch_size": 64})
    write_experiment(
        slurm_project,
        "932-trm-slurm-long",
        "trm_nav",
        TINY_TRM | {"epochs": 10000, "patience": 10000, "num_train": 2000},
    )
    slurm = {"backend": "slurm", "resources": {"nproc": 2, "time": "10"}}

    async def scenario():
        async with Client(launcher_params(slurm_project, SLURM_CONF=cluster)) as client:
            launched = await ok(client, "launch_run", {"experiment": "931", **slurm})
            assert launched["argv"][0] == "srun" and "torch.distributed.run" in launched["argv"]
            run_id = launched["run_id"]
            final = await poll(client, run_id, lambda s: s["status"] not in ENDING)
            assert final["status"] == "succeeded" and final["backend"] == "slurm" and final["job_id"], final
            assert (await ok(client, "list_runs"))["runs"][0]["job_id"] == final["job_id"]
            first = json.loads(
                next(
                    line
                    for line in (Path(final["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                    if '"start"' in line
                )
            )
            assert first["config"]["world_size"] == 2
            summary = (await ok(client, "summarize_run", {"run_id": run_id}))["summary"]
            assert summary["primary"]["name"] == "val/acc"

            long_id = (await ok(client, "launch_run", {"experiment": "932", **slurm}))["run_id"]
            await poll(client, long_id, lambda s: (s["epoch"] or 0) >= 1)
            stopped = await ok(client, "stop_run", {"run_id": long_id, "grace_seconds": 60})
            assert stopped["status"] == "stopped" and stopped["processes_left"] == 0, stopped
            last = torch.load(slurm_project / "runs" / long_id / "checkpoints" / "last.pt", weights_only=True)
            assert last["epoch"] >= 1

    anyio.run(scenario)


@pytest.mark.timeout(480)
def test_a_job_at_its_time_limit_checkpoints_requeues_and_finishes(slurm_project, cluster):
    """90 s of work in a job of 2 minutes whose trainer has SIGTERM a minute before the limit
    (Slurm's timing is coarse, give or take 15 s): it saves last.json, the job requeues and the
    second attempt resumes from that step and finishes. A 1-minute job without requeue records
    the time limit, and diagnose_run says so."""
    write_experiment(slurm_project, "933-over-time", "scripted_resume", {"steps": 900, "interval": 0.1})
    write_experiment(slurm_project, "934-over-time-once", "scripted_resume", {"steps": 900, "interval": 0.1})

    async def scenario():
        async with Client(launcher_params(slurm_project, SLURM_CONF=cluster)) as client:
            again = (
                await ok(
                    client,
                    "launch_run",
                    {
                        "experiment": "933",
                        "backend": "slurm",
                        "resources": {"partition": "short", "time": "2", "signal_s": 60, "requeue": True},
                    },
                )
            )["run_id"]
            once = (
                await ok(
                    client,
                    "launch_run",
                    {
                        "experiment": "934",
                        "backend": "slurm",
                        "resources": {"partition": "short", "time": "1", "signal_s": 30},
                    },
                )
            )["run_id"]
            ended = await poll(client, once, lambda s: s["status"] not in ENDING, timeout=200)
            assert ended["status"] == "failed" and "time limit" in ended["failure"], ended
            found = await ok(client, "diagnose_run", {"run_id": once})
            assert found["failure_class"] == "slurm_time_limit" and any("requeue" in r for r in found["remedies"])
            final = await poll(client, again, lambda s: s["status"] not in ENDING, timeout=400)
            assert final["status"] == "succeeded" and final["requeues"] >= 1, final
            records = [json.loads(line) for line in (Path(final["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            starts = [r for r in records if r.get("event") == "start"]
            assert len(starts) == final["requeues"] + 1 and starts[1]["config"]["resumed_at"] > 1  # it resumed
            steps = [r["step"] for r in records if r.get("split") == "train"]
            assert steps[-1] == 900 and len(set(steps)) == 900  # every step once, none lost or repeated

    anyio.run(scenario)


def test_a_held_job_is_queued_with_slurms_reason_and_pre_flight_knows_the_partitions(slurm_project, cluster):
    cpus = os.cpu_count() or 1
    write_experiment(slurm_project, "935-hold", "scripted", {"steps": 100000, "interval": 0.1})

    async def scenario():
        async with Client(launcher_params(slurm_project, SLURM_CONF=cluster)) as client:
            report = await ok(
                client, "preflight", {"experiment": "935", "backend": "slurm", "resources": {"partition": "gpu-a100"}}
            )
            check = next(c for c in report["checks"] if c["name"] == "slurm")
            assert report["verdict"] == "fail" and "partition 'gpu-a100' does not exist" in check["detail"]
            assert "debug" in check["detail"] and "short" in check["detail"]

            every_cpu = {"backend": "slurm", "resources": {"cpus_per_task": cpus, "time": "10"}}
            first = (await ok(client, "launch_run", {"experiment": "935", **every_cpu}))["run_id"]
            await poll(client, first, lambda s: s["status"] == "running")
            second = (await ok(client, "launch_run", {"experiment": "935", **every_cpu}))["run_id"]
            held = await poll(client, second, lambda s: s["queue_reason"] is not None)
            assert held["status"] == "queued" and held["slurm_state"] == "PENDING", held
            assert held["queue_reason"] in ("Resources", "Priority"), held
            cancelled = await ok(client, "stop_run", {"run_id": second})
            assert cancelled["status"] == "stopped" and cancelled["how"] == "cancelled while queued", cancelled
            await ok(client, "stop_run", {"run_id": first, "grace_seconds": 30})

    anyio.run(scenario)


def test_a_server_killed_mid_job_finds_the_job_again(slurm_project, cluster):
    write_experiment(slurm_project, "936-long", "scripted", {"steps": 100000, "interval": 0.1})
    seen: dict[str, str] = {}

    async def launch_and_die():
        async with Client(launcher_params(slurm_project, SLURM_CONF=cluster)) as client:
            run_id = (
                await ok(client, "launch_run", {"experiment": "936", "backend": "slurm", "resources": {"time": "10"}})
            )["run_id"]
            st = await poll(client, run_id, lambda s: s["status"] == "running")
            seen.update(run_id=run_id, job_id=st["job_id"])
            server = next(p for p in psutil.Process().children(recursive=True) if "mcp_server" in " ".join(p.cmdline()))
            server.send_signal(signal.SIGKILL)
            server.wait(10)

    with contextlib.suppress(Exception):  # the client's streams break with its server: that is the point
        anyio.run(launch_and_die)
    assert seen, "the first session did not get as far as killing its server"

    async def come_back():
        async with Client(launcher_params(slurm_project, SLURM_CONF=cluster)) as client:
            st = await ok(client, "run_status", {"run_id": seen["run_id"]})
            assert st["status"] == "running" and st["job_id"] == seen["job_id"], st
            assert st["slurm_state"] == "RUNNING", st
            stopped = await ok(client, "stop_run", {"run_id": seen["run_id"], "grace_seconds": 30})
            assert stopped["status"] == "stopped", stopped

    anyio.run(come_back)
