"""Every tool through a real MCP client, in memory."""

import anyio
import pytest
from mcp import Client

from conftest import error, ok
from mcp_server.server import mcp

TOOLS = {
    "list_experiments",
    "preflight",
    "launch_run",
    "list_runs",
    "run_status",
    "stop_run",
    "summarize_run",
    "gpu_status",
    "scratchpad_read",
    "scratchpad_append",
    "prepare_data",
    "estimate_memory",
    "diagnose_run",
    "tail_log",
    "wait_run",
    "resume_run",
    "gpu_watch",
    "compare_runs",
    "plot_run",
    "install_torch",
    "handoff_read",
    "handoff_write",
    "launch_sweep",
    "sweep_status",
    "stop_sweep",
    "promote_sweep",
    "open_dashboard",
}


def test_every_tool_is_listed_with_schema_docstring_and_annotations():
    async def go():
        async with Client(mcp) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in anyio.run(go)}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.output_schema and t.description and len(t.description) > 80, t.name
        assert t.annotations.read_only_hint is not None and t.annotations.destructive_hint is not None
    assert tools["stop_run"].annotations.destructive_hint is True
    assert tools["list_runs"].annotations.read_only_hint is True
    assert tools["preflight"].annotations.read_only_hint is False  # it runs project code (issue 12)
    assert tools["launch_run"].annotations.read_only_hint is False
    assert tools["handoff_read"].annotations.read_only_hint is True
    assert tools["handoff_write"].annotations.read_only_hint is False
    assert tools["handoff_write"].annotations.destructive_hint is False  # a new note; earlier ones stay


def test_list_experiments_shows_bundled_and_project_ones(scripted):
    exps = {e["id"]: e for e in ok("list_experiments")["experiments"]}
    assert exps["001-trm-fast-dev"]["source"] == "bundled" and exps["901-quick"]["source"] == "project"


def test_preflight_returns_structured_checks(scripted):
    report = ok("preflight", {"experiment": 1, "overrides": {"lr": "5e-4"}})
    names = [c["name"] for c in report["checks"]]
    assert names[:5] == ["experiment", "parameters", "interpreter", "torch", "device"]
    assert report["config"]["lr"] == 0.0005 and report["overrides"] == {"lr": 0.0005}
    assert report["verdict"] in ("pass", "warn")


@pytest.mark.parametrize(
    ("tool", "args", "needle"),
    [
        ("preflight", {"experiment": "77"}, "no experiment '77'"),
        ("preflight", {"experiment": "1", "overrides": {"dim": "wide"}}, "'dim' takes an int"),
        ("preflight", {"experiment": "1", "overrides": {"nope": 1}}, "unknown parameter 'nope'"),
        ("launch_run", {"experiment": "1", "overrides": {"device": "--rm"}}, "may not start with '-'"),
        ("launch_run", {"experiment": "1", "agent": "../../x"}, "not a scratchpad name"),
        ("run_status", {"run_id": "nope"}, "no run 'nope'"),
        ("run_status", {"run_id": "../manifest"}, "not a run id"),
        ("stop_run", {"run_id": "nope"}, "call list_runs"),
        ("summarize_run", {"run_id": "nope"}, "call list_runs"),
        ("scratchpad_append", {"text": "x", "agent": "a/b"}, "not a scratchpad name"),
    ],
)
def test_bad_input_is_a_tool_error_that_says_what_to_do(scripted, tool, args, needle):
    assert needle in error(tool, args)


def test_launch_status_summary_and_list(scripted):
    launched = ok("launch_run", {"experiment": "901-quick", "note": "in-memory"})
    run_id = launched["run_id"]
    assert launched["argv"][-2] == "--out"
    while (st := ok("run_status", {"run_id": run_id}))["status"] not in ("succeeded", "failed"):
        anyio.run(anyio.sleep, 0.05)
    assert st["status"] == "succeeded" and st["latest"]["val/acc"] == pytest.approx(0.9)
    summary = ok("summarize_run", {"run_id": run_id})["summary"]
    assert summary["primary"]["best"] == {"value": 0.9, "step": 5, "epoch": 5}
    assert [r["run_id"] for r in ok("list_runs")["runs"]] == [run_id]


def test_stop_run_tool(scripted):
    run_id = ok("launch_run", {"experiment": "902"})["run_id"]
    stopped = ok("stop_run", {"run_id": run_id, "grace_seconds": 10})
    assert stopped["status"] == "stopped" and stopped["processes_left"] == 0


def test_gpu_status_says_plainly_when_there_is_none(project):
    report = ok("gpu_status")
    assert report["host"]["ram_total_bytes"] > 0 and report["host"]["cpu_count"] >= 1
    if not report["devices"]:
        assert report["note"].startswith("No GPU found") and report["backend"] == "none"


def test_scratchpad_append_then_read(project):
    ok("scratchpad_append", {"text": "train exp 1 with lr 5e-4", "agent": "coordinator"})
    path = ok("scratchpad_append", {"text": "started", "kind": "launch"})["path"]
    assert path.startswith(str(project / ".claude/scratchpad/training-runner/"))
    view = ok("scratchpad_read")
    assert "train exp 1" in view["coordinator_latest"]["text"]
    assert "[launch] started" in view["own_today"]["text"] and view["own_previous_day"] is None


@pytest.mark.parametrize(
    ("tool", "args", "needle"),
    [
        ("list_runs", {"limit": 1000}, "limit is 1000; pass 1 to 100"),
        ("list_experiments", {"offset": -1}, "offset is -1; pass at least 0"),
        ("stop_run", {"run_id": "nope", "grace_seconds": 10**6}, "grace_seconds is 1000000; pass 0 to 600"),
        ("scratchpad_read", {"max_chars": 100000}, "max_chars is 100000; pass 300 to 5000"),
        (
            "wait_run",
            {"run_id": "nope", "timeout_seconds": 0},
            "timeout_seconds is 0; pass more than 0 and at most 3600",
        ),
        ("gpu_watch", {"seconds": 1, "interval": 0.01}, "interval is 0.01; pass 0.2 to 60"),
        ("tail_log", {"run_id": "nope", "stream": "env"}, "stream 'env' is not one of ['stderr', 'stdout'"),
        ("install_torch", {"build": "tpu"}, "build 'tpu' is not one of ['cpu', 'cuda', 'rocm']"),
        ("run_status", {}, "run_id is required"),
    ],
)
def test_an_argument_out_of_range_is_refused_with_the_range_never_clamped(project, tool, args, needle):
    text = error(tool, args)
    assert needle in text and text.startswith(f"{tool}: "), text
    assert "Error executing tool" not in text and "errors.pydantic.dev" not in text


def test_limits_and_enums_are_in_the_schemas_a_client_lists():
    async def go():
        async with Client(mcp) as client:
            return {t.name: t.input_schema["properties"] for t in (await client.list_tools()).tools}

    props = anyio.run(go)
    assert (props["list_runs"]["limit"]["minimum"], props["list_runs"]["limit"]["maximum"]) == (1, 100)
    assert props["stop_run"]["grace_seconds"]["maximum"] == 600
    assert props["wait_run"]["timeout_seconds"]["exclusiveMinimum"] == 0
    assert props["tail_log"]["stream"]["enum"] == ["stderr", "stdout", "metrics", "supervisor"]
    assert props["scratchpad_read"]["max_chars"]["maximum"] == 5000
    assert props["gpu_watch"]["seconds"]["maximum"] == 300
    assert props["handoff_write"]["status"]["enum"] == ["in_progress", "blocked", "complete"]
    assert "at most 500 characters" in props["handoff_write"]["current_state"]["description"]
