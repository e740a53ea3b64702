"""The one probe helper (mcp_server.probe) and the bundled probes, as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from conftest import REPO, wait_until
from mcp_server import probe
from mcp_server.probes import torch_probe


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.setattr(probe, "_cache", {})


def write_probe(tmp_path: Path, body: str, name: str = "fake_probe") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


COUNTING = """
import json, os, sys
from pathlib import Path
runs = Path(sys.argv[1])
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
print("a library's import noise")
print(json.dumps({"seen": os.environ.get("CUDA_VISIBLE_DEVICES"), "args": sys.argv[2:]}))
print("a warning", file=sys.stderr)
"""


def test_the_last_stdout_line_is_the_answer_and_stderr_comes_with_it(tmp_path):
    script = write_probe(tmp_path, COUNTING)
    answer = probe.run(
        sys.executable,
        script,
        [str(tmp_path / "runs"), "a", "b"],
        timeout_s=30,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "3"},
    )
    assert answer.data == {"seen": "3", "args": ["a", "b"]}
    assert answer.returncode == 0 and answer.stderr_tail.strip() == "a warning"


def test_one_cache_keyed_by_probe_arguments_and_the_device_variables(tmp_path, monkeypatch):
    script, runs = write_probe(tmp_path, COUNTING), tmp_path / "runs"

    def ask(*args, **kw):
        return probe.run(sys.executable, script, [str(runs), *args], timeout_s=30, ttl_s=60, **kw).data

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    ask("a")
    ask("a")
    assert runs.read_text() == "x"  # the second answer came from the cache
    ask("b")
    assert runs.read_text() == "xx"  # other arguments
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert ask("a")["seen"] == "1" and runs.read_text() == "xxx"  # other devices seen
    monkeypatch.setenv("TRAINGUARD_UNRELATED", "y")
    ask("a")
    assert runs.read_text() == "xxx"  # a variable that changes nothing a probe sees
    ask("a", key=("an input folder changed",))
    assert runs.read_text() == "xxxx"
    ask("a", unkeyed_args=["--limit", "7"])  # not part of the key
    assert runs.read_text() == "xxxx"
    stamp = script.stat().st_mtime_ns + 10**9
    os.utime(script, ns=(stamp, stamp))  # the probe file changed
    ask("a")
    assert runs.read_text() == "xxxxx"


def test_an_answer_with_an_error_is_not_cached(tmp_path):
    runs = tmp_path / "runs"
    script = write_probe(
        tmp_path,
        """
        import json, sys
        from pathlib import Path
        runs = Path(sys.argv[1])
        runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
        print(json.dumps({"error": "ValueError: not yet"}))
        sys.exit(1)
    """,
    )
    for _ in range(2):
        answer = probe.run(sys.executable, script, [str(runs)], timeout_s=30, ttl_s=60)
        assert answer.data == {"error": "ValueError: not yet"} and answer.returncode == 1
    assert runs.read_text() == "xx"


def test_a_crash_says_how_it_ended_with_the_end_of_its_stderr(tmp_path):
    script = write_probe(tmp_path, "raise RuntimeError('the probe broke')\n", "broken")
    with pytest.raises(probe.ProbeError) as caught:
        probe.run(sys.executable, script, timeout_s=30)
    assert caught.value.reason == "crash"
    assert "the broken probe exited 1 under" in str(caught.value)
    assert "RuntimeError: the probe broke" in str(caught.value)


def test_no_json_answer_is_an_error_that_says_what_a_probe_must_print(tmp_path):
    script = write_probe(tmp_path, "print('hello')\n", "chatty")
    with pytest.raises(probe.ProbeError, match="printed no JSON answer.*last line must be one JSON object") as caught:
        probe.run(sys.executable, script, timeout_s=30)
    assert caught.value.reason == "no_json"


def test_an_interpreter_that_does_not_exist_cannot_start(tmp_path):
    with pytest.raises(probe.ProbeError, match="cannot run .*/absent/python: No such file") as caught:
        probe.run(str(tmp_path / "absent" / "python"), "torch_probe", timeout_s=30, ttl_s=60)
    assert caught.value.reason == "start"


def test_a_probe_past_its_timeout_is_killed_with_everything_it_started(tmp_path):
    pids = tmp_path / "pids"
    script = write_probe(
        tmp_path,
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "w").write(str(child.pid))
        print("still thinking", file=sys.stderr, flush=True)
        time.sleep(600)
    """,
        "slow",
    )
    started = time.monotonic()
    with pytest.raises(probe.ProbeError, match=r"the slow probe did not answer within 2 s .*still thinking") as caught:
        probe.run(sys.executable, script, timeout_s=2)
    assert caught.value.reason == "timeout" and time.monotonic() - started < 30
    child = int(pids.read_text())
    wait_until(
        lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
        what="the probe's child to be killed",
    )


def test_only_the_tail_of_a_flood_of_output_is_read(tmp_path):
    script = write_probe(
        tmp_path,
        """
        import json, sys
        for _ in range(200):
            sys.stdout.write("x" * 50_000 + "\\n")
            sys.stderr.write("y" * 50_000 + "\\n")
        print(json.dumps({"done": True}))
    """,
    )
    answer = probe.run(sys.executable, script, timeout_s=60)
    assert answer.data == {"done": True} and len(answer.stderr_tail) <= probe.STDERR_TAIL_BYTES


# ---------------------------------------------------------------------------- the bundled probes


def test_the_torch_probe_answers_for_this_interpreter_cpu_only_here():
    answer = probe.run(sys.executable, "torch_probe", timeout_s=90, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    info = answer.data
    assert info["executable"] == sys.executable and info["torch"].startswith("2.")
    assert info["cuda_available"] is False and info["devices"] == [] and info["uuids"] == []


def test_the_probes_need_nothing_of_mcp_server_where_they_run(tmp_path):
    """The trainer's interpreter may be a bare venv: the probes import only the standard library
    and what they probe."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    sample = tmp_path / "sample.json"
    sample.write_text('{"a": 1}')
    env = {"PATH": os.environ["PATH"]}  # no PYTHONPATH: mcp_server is not importable there
    assert probe.run(python, "data_probe", ["json", str(sample)], timeout_s=30, env=env).data == {
        "ok": True,
        "info": "JSON dict",
    }
    broken = probe.run(python, "data_probe", ["image", str(sample)], timeout_s=30, env=env).data
    assert broken["ok"] is False and "ModuleNotFoundError" in broken["error"]  # PIL is not in that venv
    info = probe.run(python, "torch_probe", timeout_s=30, env=env).data
    assert info["prefix"] == str(venv) and "ModuleNotFoundError" in info["torch_error"]
    assert probe.run(python, "amd_probe", timeout_s=30, env=env).data["error"].startswith("ModuleNotFoundError")


def test_torch_uuids_are_written_as_the_driver_tools_write_them():
    raw = bytes.fromhex("5d3f0e2c1a7b4c2e9f1e3b8a6c4d2e10")
    assert torch_probe.device_uuid(raw) == "GPU-5d3f0e2c-1a7b-4c2e-9f1e-3b8a6c4d2e10"  # NVML's form
    assert torch_probe.device_uuid(b"752A0387D8F397B1") == "GPU-752a0387d8f397b1"  # ROCm: rocminfo's form
    assert torch_probe.device_uuid(bytes(16)) is None and torch_probe.device_uuid(None) is None


def test_every_probe_ships_in_the_wheel_and_is_found_from_a_checkout():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "mcp_server.probes" in config["packages"]
    for name in ("torch_probe", "data_probe", "amd_probe"):
        assert probe.probe_path(name).is_file() and probe.probe_path(name).parent == REPO / "mcp_server" / "probes"
