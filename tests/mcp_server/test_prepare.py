import textwrap

import pytest

from conftest import write_experiment
from mcp_server import prepare
from mcp_server.errors import TrainguardError
from mcp_server.preflight import run_preflight

SPEC = """
name = "needs_data"
description = "A script that needs a data folder that a prepare command can make."
command = ["{python}", "-c", "pass"]

[params.data_dir]
type = "path"
flag = "--data-dir"
default = "data/made"
must_exist = true
prepare = ["{python}", "{project_dir}/make_data.py", "{value}"]
help = "Made by make_data.py."
"""

MAKE = """
import sys
from pathlib import Path
if Path(sys.argv[1]).name == "broken":
    print("cannot make it", file=sys.stderr)
    sys.exit(3)
Path(sys.argv[1]).mkdir(parents=True)
(Path(sys.argv[1]) / "x.txt").write_text("data")
"""


@pytest.fixture
def needs_data(project):
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "experiments" / "trainers" / "needs_data.toml").write_text(textwrap.dedent(SPEC))
    (project / "make_data.py").write_text(MAKE)
    write_experiment(project, "950-data", "needs_data", {})
    return project


def test_missing_data_fails_preflight_and_names_prepare_data(needs_data):
    report, _, _ = run_preflight("950")
    (check,) = [c for c in report.checks if c.name == "data:data_dir"]
    assert check.verdict == "fail" and "prepare_data(experiment='950-data')" in check.fix
    assert "trainguard prepare 950-data" in check.fix


def test_prepare_data_creates_it_once_then_preflight_passes(needs_data):
    result = prepare.prepare_data("950")
    (made,) = result.paths
    assert made.action == "created" and (needs_data / "data/made/x.txt").read_text() == "data"
    assert made.argv[-1] == str(needs_data / "data/made")
    again = prepare.prepare_data("950")
    assert again.paths[0].action == "exists" and "nothing to do" in again.summary
    report, _, _ = run_preflight("950")
    assert [c.verdict for c in report.checks if c.name == "data:data_dir"] == ["pass"]


def test_a_failing_prepare_command_reports_its_log(needs_data):
    with pytest.raises(TrainguardError, match="(?s)exit code 3.*cannot make it"):
        prepare.prepare_data("950", {"data_dir": "data/broken"})


def test_prepare_refuses_paths_outside_the_project(needs_data):
    with pytest.raises(TrainguardError, match="outside"):
        prepare.prepare_data("950", {"data_dir": "../elsewhere"})
