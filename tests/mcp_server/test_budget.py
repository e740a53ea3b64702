"""Every answer within budget (issue 12, failure 12): each tool driven to its largest legal input
on a project grown past every limit must answer in at most budget.ANSWER_CHARS characters of
text, and lists say how to get the rest."""

from __future__ import annotations

import json
import shutil
import textwrap

import anyio
import pytest
from mcp import Client

from conftest import wait_until, write_experiment
from mcp_server import budget, paths, runs
from mcp_server.rundir import TERMINAL, open_run, write_json_atomic

WIDE_SPEC_HEAD = """
name = "wide"
description = "A user's script with many parameters."
command = ["{python}", "{project_dir}/scripts/scripted_trainer.py"]
output_flag = "--out"
primary_metric = "val/acc"
primary_mode = "max"
"""


def wide_spec(n: int) -> str:
    params = "".join(
        textwrap.dedent(f"""
        [params.option_with_a_long_descriptive_name_{i:02d}]
        type = "str"
        flag = "--o{i}"
        default = "x"
        help = "Option {i}."
        """)
        for i in range(n)
    )
    return WIDE_SPEC_HEAD + params


def clone_run(source: str, new_id: str, config: dict | None = None, state: dict | None = None) -> str:
    """A copy of a finished run under another id (manifest and state rewritten to name it)."""
    root = paths.runs_root()
    src = root / source
    shutil.copytree(src, root / new_id)
    run = open_run(root, new_id)
    manifest = run.read_manifest().model_copy(update={"run_id": new_id, **({"config": config} if config else {})})
    write_json_atomic(run.manifest, manifest.model_dump(mode="json"))
    if state:
        write_json_atomic(run.state_file, run.read_state().model_copy(update=state).model_dump())
    return new_id


@pytest.fixture
def grown(scripted):
    """A project past every limit: 70 experiments with long descriptions, 130 runs, one with 300
    long-named metrics, a failed one with long stderr lines and many watchdog events, 20 runs
    that differ in 40 long-valued parameters, and big scratchpads."""
    project = scripted
    (project / "experiments/trainers/wide.toml").write_text(wide_spec(40))
    for i in range(70):
        folder = write_experiment(project, f"{200 + i:03d}-grown", "scripted", {"steps": 3})
        toml = folder / "experiment.toml"
        toml.write_text(toml.read_text().replace("[args]", f'description = "{"d" * 20000}"\n[args]'))
    write_experiment(
        project, "300-wide", "wide", {f"option_with_a_long_descriptive_name_{i:02d}": "v" * 1000 for i in range(40)}
    )
    base = runs.launch("901").run_id
    wait_until(lambda: runs.status(base).status in TERMINAL, 60, "the base run")
    for i in range(110):
        clone_run(base, f"901-clone-{i:03d}")
    for i in range(20):
        clone_run(
            base,
            f"901-wide-{i:02d}",
            config={f"param_with_a_long_descriptive_name_{k:02d}": f"{i}-" + "w" * 900 for k in range(40)},
        )
    many = clone_run(base, "901-many-metrics")
    with open_run(paths.runs_root(), many).metrics.open("a") as fh:
        for step in range(1, 40):
            record = {"step": step, "split": "train"}
            record.update(
                {f"metric_with_a_rather_long_descriptive_name_number_{k:03d}": step * 0.01 + k for k in range(300)}
            )
            fh.write(json.dumps(record) + "\n")
    failed = clone_run(
        base,
        "901-failed",
        state={
            "status": "failed",
            "exit_code": 1,
            "failure": "exited with code 1 " + "f" * 5000,
            "events": [{"t": 1.0, "kind": "stall", "action": "warn", "detail": "e" * 2000} for _ in range(100)],
        },
    )
    with open_run(paths.runs_root(), failed).stderr.open("a") as fh:
        for i in range(300):
            fh.write(f"Traceback line {i} " + '\\u00e9"x' * 3000 + "\n")
        fh.write("RuntimeError: CUDA out of memory. " + "z" * 5000 + "\n")
    pad = project / ".claude/scratchpad"
    for agent in ("training-runner", "coordinator"):
        (pad / agent).mkdir(parents=True, exist_ok=True)
        for day in ("2026-11-29", "2026-11-30"):
            (pad / agent / f"{day}.md").write_text("- 10:00 [note] " + "s" * 100000 + "\n")
    return {"base": base, "many": many, "failed": failed, "wide": [f"901-wide-{i:02d}" for i in range(20)]}


def largest_calls(grown) -> list[tuple[str, dict]]:
    many, failed = grown["many"], grown["failed"]
    return [
        ("list_experiments", {"limit": 100}),
        ("list_experiments", {"limit": 100, "offset": 5}),
        ("preflight", {"experiment": "300"}),
        ("launch_run", {"experiment": "300", "dry_run": True, "note": "n" * 1000}),
        ("estimate_memory", {"experiment": "300"}),
        ("list_runs", {"limit": 100}),
        ("list_runs", {"limit": 100, "offset": 100}),
        ("run_status", {"run_id": many}),
        ("run_status", {"run_id": failed}),
        ("wait_run", {"run_id": failed, "timeout_seconds": 1}),
        ("summarize_run", {"run_id": many}),
        ("summarize_run", {"path": f"runs/{many}"}),
        ("compare_runs", {"run_ids": grown["wide"]}),
        ("compare_runs", {"run_ids": grown["wide"], "metric": "val/acc", "baseline": "0.5"}),
        ("diagnose_run", {"run_id": failed}),
        ("tail_log", {"run_id": failed, "lines": 500}),
        ("tail_log", {"run_id": many, "stream": "metrics", "lines": 500}),
        ("tail_log", {"run_id": failed, "lines": 500, "pattern": "Traceback"}),
        ("stop_run", {"run_id": failed}),
        ("gpu_status", {}),
        ("gpu_watch", {"seconds": 0.3, "interval": 0.2}),
        ("scratchpad_read", {"max_chars": 5000}),
        ("scratchpad_append", {"text": "t" * 3999}),
    ]


def test_every_tool_answers_within_budget_at_its_largest_legal_input(grown):
    from mcp_server.server import mcp

    async def scenario():
        out = []
        async with Client(mcp) as client:
            for name, args in largest_calls(grown):
                result = await client.call_tool(name, args)
                out.append((name, args, result))
        return out

    sizes = {}
    for name, args, result in anyio.run(scenario):
        text = "".join(c.text for c in result.content if c.type == "text")
        assert text.rstrip(".: ") != f"Error executing tool {name}", (name, text[:300])  # never the bare form
        assert len(text) <= budget.ANSWER_CHARS, (name, args, len(text), text[:400])
        sizes[f"{name}({', '.join(args)})"] = len(text)
    print("\nanswer sizes:", json.dumps(sizes, indent=1))


def test_lists_page_with_a_total_and_the_next_offset(grown):
    from conftest import ok

    seen, offset, pages = [], 0, 0
    while offset is not None:
        page = ok("list_runs", {"limit": 100, "offset": offset})
        assert page["total"] == 133
        seen += [r["run_id"] for r in page["runs"]]
        offset = page.get("next_offset")
        pages += 1
    assert len(seen) == len(set(seen)) == 133 and pages > 1
    exps, offset = [], 0
    while offset is not None:
        page = ok("list_experiments", {"limit": 100, "offset": offset})
        exps += [e["id"] for e in page["experiments"]]
        offset = page.get("next_offset")
    assert len(exps) == page["total"] and "300-wide" in exps and "269-grown" in exps
    compare = ok("compare_runs", {"run_ids": grown["wide"]})
    assert "39 more hyperparameters differ" in compare["note"]  # 1 shown of 40: the rows' share of the budget
    assert len(compare["rows"]) == 20 and all(len(row["differs"]) == 1 for row in compare["rows"])
