"""The whole path as a client sees it: the plugin's launcher spawned over stdio, a real
training run of the bundled TRM trainer, a stop that leaves nothing behind, and bad input."""

import json
import sys
from pathlib import Path

import anyio
import pytest
import torch
from mcp import Client, StdioServerParameters

from conftest import call_ok as ok
from conftest import launcher_params, poll_status, server_env, write_experiment
from mcp_server import procs


async def call(client, name, args=None):
    result = await client.call_tool(name, args or {})
    return result


async def poll(client, run_id, until, timeout=240.0):
    return await poll_status(client, run_id, until, timeout, interval=0.2)


def params(project: Path):
    return launcher_params(project)


def test_train_stop_and_bad_input_over_stdio(tiny_trm):
    project = tiny_trm
    write_experiment(
        project,
        "912-trm-long",
        "trm_nav",
        {"epochs": 10000, "patience": 10000, "dim": 16, "depth": 1, "num_train": 2000, "device": "cpu"},
    )

    async def scenario():
        async with Client(params(project)) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"preflight", "launch_run", "run_status", "stop_run", "summarize_run"} <= tools

            # 1. A real run completes, and its summary names the best val acc and its epoch.
            launched = await ok(client, "launch_run", {"experiment": "911", "note": "stdio test"})
            run_id = launched["run_id"]
            final = await poll(client, run_id, lambda s: s["status"] not in ("starting", "running"))
            assert final["status"] == "succeeded", final
            assert final["epoch"] == 3 and {"best.pt", "last.pt", "history.json"} <= set(final["checkpoints"])
            summary = (await ok(client, "summarize_run", {"run_id": run_id}))["summary"]
            best = summary["primary"]["best"]
            history = json.loads((Path(final["run_dir"]) / "checkpoints" / "history.json").read_text())
            assert best["value"] == pytest.approx(max(history["val_acc"]), rel=1e-3)
            assert best["epoch"] == history["val_acc"].index(max(history["val_acc"])) + 1
            assert f"best val/acc {best['value']:.4g} at epoch {best['epoch']}" in summary["headline"]
            ckpt = torch.load(Path(final["run_dir"]) / "checkpoints" / "best.pt", weights_only=False)
            assert ckpt["epoch"] == best["epoch"] and ckpt["config"]["dim"] == 16

            # 2. A longer run is stopped: SIGTERM, checkpoint, and no process of its group left.
            long_id = (await ok(client, "launch_run", {"experiment": "912"}))["run_id"]
            await poll(client, long_id, lambda s: (s["epoch"] or 0) >= 1)
            state = json.loads((project / "runs" / long_id / "state.json").read_text())
            stopped = await ok(client, "stop_run", {"run_id": long_id, "grace_seconds": 30})
            assert stopped["status"] == "stopped" and stopped["processes_left"] == 0
            assert procs.group_members(state["pgid"]) == []
            assert not procs.is_alive(state["pid"], state["pid_started"])
            last = torch.load(project / "runs" / long_id / "checkpoints" / "last.pt", weights_only=False)
            assert last["epoch"] >= 1

            listed = [r["run_id"] for r in (await ok(client, "list_runs"))["runs"]]
            assert set(listed) == {run_id, long_id}

            # 3. Bad input: a ToolError whose text says what to do.
            for name, args, needle in [
                ("launch_run", {"experiment": "404"}, "Call list_experiments"),
                ("run_status", {"run_id": "no-such-run"}, "call list_runs"),
                ("preflight", {"experiment": "1", "overrides": {"lr": "fast"}}, "'lr' takes a float"),
            ]:
                result = await call(client, name, args)
                assert result.is_error and needle in result.content[0].text, result.content[0].text

    anyio.run(scenario)


def test_python_m_mcp_server_serves_too(project):
    env = server_env(project)

    async def scenario():
        async with Client(StdioServerParameters(command=sys.executable, args=["-m", "mcp_server"], env=env)) as c:
            report = await ok(c, "gpu_status")
            assert report["host"]["cpu_count"] >= 1

    anyio.run(scenario)


def test_gpu_status_over_stdio_keeps_the_wire_clean(project):
    """The server's gpu_status probes NVML and amdsmi (which prints on import without ROCm): the
    MCP stream over stdout must stay pure JSON-RPC, so the client gets a structured answer."""

    async def scenario():
        async with Client(params(project)) as client:
            first = await ok(client, "gpu_status")
            second = await ok(client, "gpu_status")  # and again, from the cached probe
            return first, second

    first, second = anyio.run(scenario)
    assert first["host"]["cpu_count"] >= 1 and second["backend"] == first["backend"]
    if first["backend"] == "none":
        assert "amdsmi" in first["note"] and "nvidia" in first["note"].lower()
