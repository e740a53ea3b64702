"""Hostile and random input through a real MCP client: the server never crashes and answers
only with a structured result or a ToolError; escapes and injections are refused.

Property-based: every tool gets arguments drawn from JSON-shaped values (strings with
traversal, flags, shell metacharacters, NUL and control characters, huge and negative
numbers, nested objects, unknown keys). One client session serves all examples of a tool.
"""

from __future__ import annotations

import os
import string
from contextlib import contextmanager

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from conftest import error, ok, write_experiment
from mcp_server.server import mcp

EXAMPLES = int(os.environ.get("TRAINGUARD_FUZZ_EXAMPLES", "100"))
SEEN = {"inputs": 0}

HOSTILE = [
    "../../etc/passwd",
    "/etc/shadow",
    "--lr",
    "-rf",
    "a\x00b",
    "x; rm -rf /",
    "$(touch pwned)",
    "`id`",
    "a|b",
    "images/../../..",
    "\n--device\ncuda",
    "\x1b[2J",
    "C:\\Windows",
    "~root",
    "%2e%2e/",
    "*",
    "",
    " " * 3,
    "é" * 2000,
    "001-trm-fast-dev/../../..",
    "999",
    "-1",
    "1e309",
    "nan",
]
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=60), st.text(alphabet=string.printable, max_size=30))
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=8
)
# Experiment references that would resolve to a real experiment start real work (a torch probe, a
# trace, data preparation); those paths have their own tests. Fuzzing keeps to the refusals.
not_a_ref = text.filter(lambda s: not s.strip().lstrip("0").split("-")[0].isdigit())

TOOLS = {
    "list_experiments": {},
    "preflight": {"experiment": not_a_ref, "overrides": json_value},
    "estimate_memory": {"experiment": not_a_ref, "overrides": json_value, "gpu_memory_gib": scalar},
    "prepare_data": {"experiment": not_a_ref, "overrides": json_value},
    "launch_run": {
        "experiment": not_a_ref,
        "overrides": json_value,
        "note": text,
        "agent": text,
        "acknowledge": json_value,
        "dry_run": scalar,
    },
    "resume_run": {"run_id": text, "overrides": json_value, "note": text, "acknowledge": json_value},
    "list_runs": {},
    "run_status": {"run_id": text},
    "wait_run": {"run_id": text, "timeout_seconds": st.floats(min_value=-10, max_value=2), "poll_seconds": scalar},
    "stop_run": {"run_id": text, "grace_seconds": scalar},
    "summarize_run": {"run_id": text, "path": text, "primary_metric": text},
    "compare_runs": {"run_ids": json_value, "metric": text, "baseline": text},
    "plot_run": {"run_id": text, "metrics": json_value},
    "diagnose_run": {"run_id": text},
    "tail_log": {"run_id": text, "stream": text, "lines": scalar, "pattern": text},
    "gpu_status": {},
    # Valid waits are kept under 0.3 s so the fuzzing does not sleep; every other type is fair game.
    "gpu_watch": {
        "seconds": st.one_of(
            st.floats(min_value=-5, max_value=0.3),
            st.integers(max_value=0),
            text,
            st.none(),
            st.booleans(),
            json_value.filter(lambda v: isinstance(v, list)),
        ),
        "interval": st.one_of(st.floats(allow_nan=True), text, st.none()),
    },
    "scratchpad_read": {"agent": text, "coordinator": text, "max_chars": scalar},
    "scratchpad_append": {"text": text, "agent": text, "kind": text},
    "handoff_read": {},
    "handoff_write": {
        "current_state": text,
        "completed_work": text,
        "remaining_work": text,
        "next_action": text,
        "blockers": json_value,
        "phase": text,
        "status": text,
        "agent": text,
        "baseline": text,
    },
    "launch_sweep": {
        "experiment": not_a_ref,
        "space": json_value,
        "strategy": text,
        "max_trials": scalar,
        "prune": json_value,
        "trial_budget_s": scalar,
        "overrides": json_value,
    },
    "sweep_status": {"sweep_id": text, "experiment": not_a_ref, "limit": scalar},
    "stop_sweep": {"sweep_id": text},
    "promote_sweep": {"sweep_id": text, "top_k": scalar, "overrides": json_value, "dry_run": scalar},
    # A valid port would really start a dashboard: fuzzing keeps to the refusals.
    "open_dashboard": {
        "port": st.one_of(
            text.filter(lambda t: not t.strip().isdigit()),
            st.integers(max_value=1023),
            st.integers(min_value=65536),
            st.floats(max_value=1000) | st.floats(min_value=70000),
        )
    },
    # A valid build would really install torch (minutes): fuzzing keeps to the refusals.
    "install_torch": {"build": text.filter(lambda s: s not in ("cpu", "cuda", "rocm")), "target": text},
}


@contextmanager
def session():
    """One in-memory MCP client session, callable from synchronous hypothesis tests."""
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(mcp)) as client:
        yield lambda name, args: portal.call(client.call_tool, name, args)


# Keys every example carries: gpu_watch's default is a 10 s wait, too long to fuzz a hundred times.
REQUIRED = {"gpu_watch": ("seconds",), "install_torch": ("build",), "open_dashboard": ("port",)}


def arguments(tool: str):
    fields = TOOLS[tool]
    must = {k: v for k, v in fields.items() if k in REQUIRED.get(tool, ())}
    rest = {k: v for k, v in fields.items() if k not in must}
    known = st.fixed_dictionaries(must, optional=rest) if fields else st.just({})
    extra = st.dictionaries(text, json_value, max_size=2)
    return st.tuples(known, extra).map(lambda pair: {**pair[1], **pair[0]})


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_fuzzed_input_gets_a_result_or_a_tool_error(project, tool):
    write_experiment(project, "961-fuzz", "trm_nav", {"epochs": 1})  # something real beside the noise
    with session() as call:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(args=arguments(tool))
        def check(args):
            SEEN["inputs"] += 1
            result = call(tool, args)
            if result.is_error:
                assert result.content and result.content[0].text.strip(), "an error must say something"
            else:
                assert result.structured_content is not None, f"{tool}({args!r}) returned no structured result"

        before = SEEN["inputs"]
        check()
        assert SEEN["inputs"] - before >= min(EXAMPLES, 10)  # hypothesis really drew inputs
        # The server still answers after all of that, and nothing was launched.
        assert not call("list_experiments", {}).is_error
    assert not list(project.glob("runs/*/manifest.json"))


@pytest.fixture(scope="module", autouse=True)
def report_fuzzed_inputs():
    """How many inputs were fuzzed in this module (pytest -s shows it)."""
    yield
    print(f"\nfuzzed inputs: {SEEN['inputs']} over {len(TOOLS)} tools")


# ---------------------------------------------------------------------------- named refusals


def test_path_traversal_is_refused(project):
    text = error("preflight", {"experiment": "7", "overrides": {"data_dir": "../../etc"}})
    assert "outside" in text and "data_dir" in text


def test_symlink_escape_is_refused(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (project / "images").mkdir()
    (project / "images" / "link").symlink_to(outside)
    text = error("preflight", {"experiment": "7", "overrides": {"data_dir": "images/link"}})
    assert "outside" in text and str(outside) in text


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"renderer": "--evil"}, "may not start with '-'"),
        ({"--lr": 1}, "unknown parameter"),
        ({"lr": "1e-5 --device cuda"}, "takes a float"),
        ({"data_dir": "images\nx"}, "NUL or line breaks"),
    ],
)
def test_flag_injection_is_refused(project, overrides, needle):
    assert needle in error("preflight", {"experiment": "2", "overrides": overrides})


def test_env_injection_is_refused(project):
    assert "unknown parameter" in error("launch_run", {"experiment": "1", "overrides": {"LD_PRELOAD": "/tmp/x.so"}})
    assert "unknown parameter" in error("launch_run", {"experiment": "1", "overrides": {"PATH": "/tmp"}})


def test_shell_metacharacters_stay_one_literal_argument(project):
    """A path with shell syntax is confined and passed as one argv element; nothing runs it."""
    result = ok(
        "launch_run", {"experiment": "12", "overrides": {"config": "cfg; touch pwned $(id).toml"}, "dry_run": True}
    )
    argv = result["argv"]
    assert argv[argv.index("--config") + 1] == "cfg; touch pwned $(id).toml"
    assert not (project / "pwned").exists()


def test_bad_run_ids_and_log_requests_are_refused(scripted):
    for bad in ("../x", "a/b", ".hidden", "x" * 200, ""):
        assert error("run_status", {"run_id": bad})
    run_id = ok("launch_run", {"experiment": "901"})["run_id"]
    assert "not a valid regular expression" in error("tail_log", {"run_id": run_id, "pattern": "("})
    assert "is not one of" in error("tail_log", {"run_id": run_id, "stream": "../../etc/passwd"})
    assert "pass 1 to 500" in error("tail_log", {"run_id": run_id, "lines": 10**9})


def test_a_run_folder_or_log_that_links_out_is_refused(scripted, tmp_path):
    run_id = ok("launch_run", {"experiment": "901"})["run_id"]
    runs_dir = scripted / "runs"
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    # A run folder that is a link to another place.
    (runs_dir / "901-quick-20990101-000000").symlink_to(runs_dir / run_id, target_is_directory=True)
    assert "link out of" in error("run_status", {"run_id": "901-quick-20990101-000000"})
    assert [r["run_id"] for r in ok("list_runs")["runs"]] == [run_id]  # not listed either
    # A log inside a real run folder replaced by a link to a file outside.
    ok("wait_run", {"run_id": run_id, "timeout_seconds": 30})
    log = runs_dir / run_id / "stderr.log"
    log.unlink()
    log.symlink_to(secret)
    text = error("tail_log", {"run_id": run_id})
    assert "symbolic link" in text and "hunter2" not in text


# ---------------------------------------------------------------------------- hostile project files

PYTHONS = [
    "scripts/python",
    "scripts/evil.sh",
    "../../usr/bin/python3",
    "/bin/sh",
    ".venv/bin/python",
    "fake/bin/python",
    "scripts/python\n",
    "a\x00b",
]
toml_value = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40)).map(
    lambda s: s.replace("\\", "\\\\").replace('"', '\\"')
)
experiment_toml = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda trainer, python, title, junk: (
            f'trainer = "{trainer}"\ntitle = "{title}"\npython = "{python}"\n{junk}\n[args]\nsteps = 2\n'
        ).encode("utf-8", "surrogatepass"),
        st.sampled_from(["scripted", "hostile", "nope"]),
        st.sampled_from(PYTHONS).map(lambda p: p.replace("\n", "\\n").replace("\x00", "\\u0000")),
        toml_value,
        st.sampled_from(["", "x = " + "[" * 3000 + "]" * 3000, "\xff", "[args", "description = 1"]),
    ),
)
spec_toml = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b'name = "hostile"\ndescription = "d"\ncommand = ["{python}", "-c", "pass"]\n[params]\n',
            b'name = "hostile"\ndescription = "d"\ncommand = ["{python}"]\n[params]\n[memory]\nscript = "/tmp/x.py"\n',
            b'name = "hostile"\ndescription = "\xff"\n',
            b"[" * 4000,
            b"",
        ]
    ),
)


def test_hostile_project_files_get_a_listing_row_or_a_tool_error_and_run_nothing(scripted):
    marker = scripted / "pwned"
    for name in ("python", "evil.sh"):
        script = scripted / "scripts" / name
        script.write_text(f"#!/bin/sh\ntouch {marker}\n")
        script.chmod(0o755)
    folder = scripted / "experiments" / "962-hostile"
    folder.mkdir(parents=True)
    spec = scripted / "experiments" / "trainers" / "hostile.toml"
    with session() as call:

        @settings(
            max_examples=max(10, EXAMPLES // 4),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(toml=experiment_toml, hypothesis_md=st.binary(max_size=100), spec_file=spec_toml)
        def check(toml, hypothesis_md, spec_file):
            SEEN["inputs"] += 1
            (folder / "experiment.toml").write_bytes(toml)
            (folder / "hypothesis.md").write_bytes(hypothesis_md)
            spec.write_bytes(spec_file)
            listed, offset = {}, 0
            while offset is not None:
                result = call("list_experiments", {"limit": 100, "offset": offset})
                assert not result.is_error, result.content[0].text
                listed.update({e["id"]: e for e in result.structured_content["experiments"]})
                offset = result.structured_content.get("next_offset")
            assert "901-quick" in listed and listed["901-quick"].get("error") is None  # the good ones stay
            assert "962-hostile" in listed
            for tool in ("preflight", "estimate_memory", "prepare_data"):
                result = call(tool, {"experiment": "962"})
                text = result.content[0].text
                assert text.strip() and text.rstrip(".: ") != f"Error executing tool {tool}"
                assert "failed unexpectedly" not in text, text
            assert not marker.exists(), "a project file ran as the interpreter"

        check()
