"""Several processes on one node (issue 14, part 2): a run under torchrun, through the stdio
MCP client, as a user's agent drives it. Real torchrun, real gloo DDP of the bundled TRM
trainer on the CPU: it trains and is summarised, a stop leaves no process of any rank and a
loadable checkpoint, resume continues it, and a rank that raises is named by diagnose_run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import anyio
import pytest
import torch
from mcp import Client

from conftest import REPO, launcher_params, write_experiment
from conftest import call_ok as ok
from conftest import poll_status as poll
from mcp_server import procs

ENDING = ("starting", "queued", "running")
TORCHRUN = {"backend": "torchrun", "resources": {"nproc": 2}}
DDP_TRM = {"num_train": 1000, "num_test": 100, "dim": 16, "depth": 1, "batch_size": 64, "device": "cpu"}


def no_process_left(run_id: str) -> bool:
    return procs.RunProcesses(run_id, None, None).members() == []


def metrics_config(run_dir: Path) -> dict:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            return record["config"]
    raise AssertionError("no start event")


def test_a_ddp_run_trains_stops_without_a_rank_left_and_resumes(project):
    write_experiment(project, "921-trm-ddp", "trm_nav", DDP_TRM | {"epochs": 2, "patience": 2})
    write_experiment(project, "922-trm-ddp-long", "trm_nav", DDP_TRM | {"epochs": 10000, "patience": 10000})

    async def scenario():
        async with Client(launcher_params(project)) as client:
            # 1. Two gloo ranks train to the end; rank 0 alone reports, with the global batch.
            checked = await ok(client, "preflight", {"experiment": "921", **TORCHRUN})
            backend = next(c for c in checked["checks"] if c["name"] == "backend")
            assert backend["verdict"] == "pass" and "32 samples per rank of the global batch 64" in backend["detail"]
            launched = await ok(client, "launch_run", {"experiment": "921", **TORCHRUN})
            assert launched["argv"][1:7] == [
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "--log-dir",
            ]
            run_id = launched["run_id"]
            final = await poll(client, run_id, lambda s: s["status"] not in ("starting", "queued", "running"))
            assert final["status"] == "succeeded" and final["backend"] == "torchrun" and final["nproc"] == 2, final
            config = metrics_config(Path(final["run_dir"]))
            assert config["world_size"] == 2 and config["batch_size_per_rank"] == 32
            lines = (Path(final["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            starts = [ln for ln in lines if '"start"' in ln]
            assert len(starts) == 1  # one reporter
            summary = (await ok(client, "summarize_run", {"run_id": run_id}))["summary"]
            assert summary["primary"]["name"] == "val/acc" and summary["primary"]["best"]["epoch"] in (1, 2)

            # 2. A long run is stopped mid-training: every rank stops, one checkpoint, nothing left.
            long_id = (await ok(client, "launch_run", {"experiment": "922", **TORCHRUN}))["run_id"]
            await poll(client, long_id, lambda s: (s["epoch"] or 0) >= 1)
            stopped = await ok(client, "stop_run", {"run_id": long_id, "grace_seconds": 60})
            assert stopped["status"] == "stopped" and stopped["processes_left"] == 0, stopped
            assert no_process_left(long_id)
            last = torch.load(project / "runs" / long_id / "checkpoints" / "last.pt", weights_only=True)
            assert last["epoch"] >= 1 and not any(k.startswith("module.") for k in last["model_state_dict"])
            done = last["epoch"]

            # 3. Resume continues it, under torchrun again, from the checkpoint's epoch.
            resumed = await ok(client, "resume_run", {"run_id": long_id, "overrides": {"epochs": done + 1}})
            again = await poll(client, resumed["run_id"], lambda s: s["status"] not in ENDING)
            assert again["status"] == "succeeded" and again["backend"] == "torchrun", again
            assert again["epoch"] == done + 1 and metrics_config(Path(again["run_dir"]))["resume_epoch"] == done

    anyio.run(scenario)


RANK_FAIL_SPEC = """
name = "rank_fail"
description = "A DDP script whose rank 1 raises after the group formed."
command = ["{python}", "{project_dir}/rank_fail.py"]
output_flag = "--out"
primary_metric = "loss"

[params.steps]
type = "int"
flag = "--steps"
default = 1
help = "Unused: the script fails before it counts."
"""
RANK_FAIL = f"""
import sys, time
sys.path.insert(0, {str(REPO / "trainers")!r})
import torch.distributed as dist
from trainkit import Distributed, run_trainer

def train(args, metrics, stop):
    ranks = Distributed()
    ranks.init("cpu")
    metrics.log(0, "train", loss=1.0)
    if ranks.rank == 1:
        raise ValueError("the shard of rank 1 holds a corrupt sample 4711")
    dist.barrier()  # rank 0 waits here for a rank that is gone
    time.sleep(60)
    return 0

sys.exit(run_trainer(train, None))
"""


def test_a_rank_that_raises_ends_the_job_and_is_named_by_diagnose(project):
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "experiments" / "trainers" / "rank_fail.toml").write_text(textwrap.dedent(RANK_FAIL_SPEC))
    (project / "rank_fail.py").write_text(RANK_FAIL)
    write_experiment(project, "923-rank-fail", "rank_fail", {})

    async def scenario():
        async with Client(launcher_params(project)) as client:
            run_id = (await ok(client, "launch_run", {"experiment": "923", **TORCHRUN}))["run_id"]
            final = await poll(client, run_id, lambda s: s["status"] not in ("starting", "queued", "running"), 120)
            assert final["status"] == "failed", final
            assert no_process_left(run_id)
            found = await ok(client, "diagnose_run", {"run_id": run_id})
            assert found["rank"] == 1, found
            assert "Rank 1 failed first" in found["summary"]
            assert found["evidence"][0] == {
                "source": "rank 1",
                "text": "ValueError: the shard of rank 1 holds a corrupt sample 4711",
            }

    anyio.run(scenario)


def test_the_experiment_says_where_it_runs_and_preflight_checks_it(project):
    folder = write_experiment(project, "924-trm-ddp-3", "trm_nav", DDP_TRM | {"epochs": 1})
    with (folder / "experiment.toml").open("a") as fh:
        fh.write('\n[run]\nbackend = "torchrun"\nresources = { nproc = 3 }\n')

    async def scenario():
        async with Client(launcher_params(project)) as client:
            report = await ok(client, "preflight", {"experiment": "924"})
            assert report["backend"] == "torchrun" and report["resources"]["nproc"] == 3
            backend = next(c for c in report["checks"] if c["name"] == "backend")
            assert backend["verdict"] == "fail" and "does not split over 3 ranks" in backend["detail"]
            assert "multiple of 3" in backend["fix"]
            bad = await client.call_tool("launch_run", {"experiment": "924", "resources": {"gpu_count": 2}})
            text = bad.content[0].text
            assert bad.is_error and "resources.gpu_count: Extra inputs are not permitted" in text, text
            assert "resources takes [" in text and "'nproc'" in text

    anyio.run(scenario)


@pytest.mark.gpu
def test_a_one_gpu_nccl_job_trains_on_the_gpu_of_its_slot(project):
    """On a machine with a GPU: torchrun with one rank joins an NCCL group, trains with DDP on the
    GPU its slot names (CUDA_VISIBLE_DEVICES), and reports from rank 0."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA/ROCm device")
    write_experiment(project, "925-trm-nccl", "trm_nav", DDP_TRM | {"epochs": 2, "patience": 2, "device": "cuda"})

    async def scenario():
        async with Client(launcher_params(project)) as client:
            run_id = (
                await ok(client, "launch_run", {"experiment": "925", "backend": "torchrun", "resources": {"nproc": 1}})
            )["run_id"]
            return await poll(client, run_id, lambda s: s["status"] not in ("starting", "queued", "running"))

    final = anyio.run(scenario)
    assert final["status"] == "succeeded", final
    run_dir = Path(final["run_dir"])
    config = metrics_config(run_dir)
    assert config["resolved_device"] == "cuda:0" and config["world_size"] == 1
    state = json.loads((run_dir / "state.json").read_text())
    assert state["slots"] == [0]
