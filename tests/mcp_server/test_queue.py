"""One slot, one job: the FIFO queue, cancelling a queued run, racing launches, and a server
killed mid-run and started again (real processes throughout)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters

from conftest import REPO, server_env, wait_until, write_experiment
from mcp_server import paths, procs, runs
from mcp_server.errors import Conflict, InvalidInput
from mcp_server.rundir import TERMINAL, open_run

LONG = {"steps": 100000, "interval": 0.05}


def statuses(*run_ids):
    return [runs.status(r).status for r in run_ids]


def test_a_second_run_queues_fifo_and_starts_when_the_slot_frees(scripted, monkeypatch):
    monkeypatch.setenv("TRAINGUARD_CPU_SLOTS", "1")
    write_experiment(scripted, "951-long", "scripted", LONG)
    write_experiment(scripted, "952-short", "scripted", {"steps": 3})
    first = runs.launch("951")
    second = runs.launch("952")
    third = runs.launch("952")
    assert (first.status, second.status, third.status) == ("running", "queued", "queued")
    assert "stop_run cancels it" in second.next_step
    listed = {r.run_id: r for r in runs.list_runs().runs}
    assert (listed[second.run_id].queue_position, listed[third.run_id].queue_position) == (1, 2)

    cancelled = runs.stop(third.run_id, grace_s=1.0)
    assert cancelled.status == "stopped" and cancelled.how == "cancelled while queued"
    assert open_run(paths.runs_root(), third.run_id).read_state().pid is None  # its trainer never started
    assert statuses(first.run_id, second.run_id) == ["running", "queued"]

    runs.stop(first.run_id, grace_s=1.0)
    final = wait_until(lambda: (s := runs.status(second.run_id)).status in TERMINAL and s, what="the queued run")
    assert final.status == "succeeded" and final.exit_code == 0


def test_racing_launches_never_both_run(scripted, monkeypatch):
    monkeypatch.setenv("TRAINGUARD_CPU_SLOTS", "1")
    write_experiment(scripted, "953-race", "scripted", {"steps": 40, "interval": 0.05})
    results, errors = [], []

    def go():
        try:
            results.append(runs.launch("953"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    ids = [r.run_id for r in results]
    assert sorted(r.status for r in results) == ["queued", "queued", "running"]
    # Sample until all are done: at no moment do two of them run.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = statuses(*ids)
        assert now.count("running") <= 1, now
        if all(s in TERMINAL for s in now):
            break
        time.sleep(0.02)
    assert statuses(*ids) == ["succeeded"] * 3
    starts = sorted(open_run(paths.runs_root(), r).read_state().started_at for r in ids)
    ends = sorted(open_run(paths.runs_root(), r).read_state().finished_at for r in ids)
    assert starts[1] >= ends[0] and starts[2] >= ends[1]  # one after the other


def server_params(project):
    env = server_env(project) | {"TRAINGUARD_SERVER_PYTHON": sys.executable}
    return StdioServerParameters(command=str(REPO / "bin" / "trainguard-mcp"), args=[], env=env, cwd="/")


def our_servers():
    """The stdio server processes this test started (the launcher execs Python)."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "mcp_server" in " ".join(p.cmdline()) and "supervisor" not in " ".join(p.cmdline())
    ]


def test_a_run_survives_its_server_being_killed_and_a_new_server_finds_it(scripted):
    write_experiment(scripted, "954-survive", "scripted", {"steps": 60, "interval": 0.05})

    async def first_server():
        async with Client(server_params(scripted)) as client:
            launched = (await client.call_tool("launch_run", {"experiment": "954"})).structured_content
            servers = our_servers()
            assert len(servers) == 1
            os.kill(servers[0].pid, signal.SIGKILL)  # the Claude Code session dies mid-run
            return launched["run_id"]

    try:
        run_id = anyio.run(first_server)
    except BaseException as exc:  # the client sees its server vanish; that is the point
        run_id = next((r.run_id for r in runs.list_runs().runs), None)
        assert run_id, exc
    state = open_run(paths.runs_root(), run_id).read_state()
    assert procs.is_alive(state.supervisor_pid, state.supervisor_started)  # the run goes on without it
    wait_until(lambda: runs.status(run_id).status in TERMINAL, 60, "the run to end with no server up")

    async def second_server():
        async with Client(server_params(scripted)) as client:
            return (await client.call_tool("run_status", {"run_id": run_id})).structured_content

    st = anyio.run(second_server)
    assert st["status"] == "succeeded" and st["exit_code"] == 0  # recorded while no server ran
    assert st["latest"]["train/loss"] == pytest.approx(1 / 60, rel=1e-3)  # 4 significant figures


def test_resume_run_continues_a_stopped_trm_run_from_its_last_checkpoint(project):
    long_trm = {
        "epochs": 10000,
        "patience": 10000,
        "dim": 16,
        "depth": 1,
        "num_train": 1500,
        "num_test": 60,
        "device": "cpu",
    }
    write_experiment(project, "955-trm-resume", "trm_nav", long_trm)
    first = runs.launch("955")
    epoch = wait_until(lambda: (e := runs.status(first.run_id).epoch) and e >= 2 and e, 120, "two epochs")
    stopped = runs.stop(first.run_id, grace_s=20.0)
    assert stopped.status == "stopped" and stopped.processes_left == 0
    last_epoch = runs.status(first.run_id).epoch
    assert last_epoch >= epoch

    dry = runs.resume_run(first.run_id, {"epochs": last_epoch + 2}, dry_run=True)
    assert dry.argv[dry.argv.index("--resume") + 1] == f"runs/{first.run_id}/checkpoints/last.pt"
    assert dry.argv[dry.argv.index("--dim") + 1] == "16"  # the first run's settings carry over

    resumed = runs.resume_run(first.run_id, {"epochs": last_epoch + 2}, note="two more epochs")
    final = wait_until(lambda: (s := runs.status(resumed.run_id)).status in TERMINAL and s, 120, "the resumed run")
    assert final.status == "succeeded", final
    run = open_run(paths.runs_root(), resumed.run_id)
    from mcp_server.curves.load import loaded
    from mcp_server.curves.stats import metric_stats

    with loaded(run.path) as found:
        acc = metric_stats(found.curves.series["val/acc"])
    # It continued at the checkpoint's next epoch (a stop mid-epoch writes last.pt of the epoch before).
    assert last_epoch <= acc.first.epoch <= last_epoch + 1 and acc.last.epoch == last_epoch + 2

    with pytest.raises(Conflict, match="stop_run it first"):
        runs.resume_run(runs.launch("955").run_id)


def test_resume_run_refuses_without_a_checkpoint(scripted):
    write_experiment(scripted, "956-noresume", "scripted", {"steps": 2})
    first = runs.launch("956")
    wait_until(lambda: runs.status(first.run_id).status in TERMINAL, 30, "the run")
    with pytest.raises(InvalidInput, match="names no resume_checkpoint"):
        runs.resume_run(first.run_id)


def test_a_run_of_two_takes_both_slots_at_once_or_none(tmp_path):
    """Two 2-GPU runs on a 3-GPU machine: the first takes two slots, the second takes none
    (it never holds one while waiting for another), so the third slot stays free for a 1-GPU run."""
    from mcp_server import slots

    first = slots.try_acquire(tmp_path, "gpu", 3, needed=2)
    assert first is not None and [i for i, _ in first] == [0, 1]
    assert slots.try_acquire(tmp_path, "gpu", 3, needed=2) is None
    single = slots.try_acquire(tmp_path, "gpu", 3, needed=1)
    assert single is not None and [i for i, _ in single] == [2]
    for _, fh in first:
        fh.close()
    second = slots.try_acquire(tmp_path, "gpu", 3, needed=2)
    assert second is not None and [i for i, _ in second] == [0, 1]
    for _, fh in second + single:
        fh.close()


def test_a_gpu_run_sees_only_the_gpus_of_its_slots():
    from mcp_server import slots

    assert slots.device_env([1, 2], {}) == {
        "CUDA_VISIBLE_DEVICES": "1,2",
        "HIP_VISIBLE_DEVICES": "1,2",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    # The server was shown GPUs 4-7: slot i is the i-th of them, by index or UUID.
    env = slots.device_env([0, 2], {"CUDA_VISIBLE_DEVICES": "4,5,GPU-6a,7"})
    assert env["CUDA_VISIBLE_DEVICES"] == "4,GPU-6a" and env["HIP_VISIBLE_DEVICES"] == "0,2"
