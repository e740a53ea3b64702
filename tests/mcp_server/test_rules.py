import pytest
from pydantic import ValidationError

from conftest import write_experiment
from mcp_server import paths, runs
from mcp_server.errors import Conflict, InvalidInput
from mcp_server.preflight import run_preflight
from mcp_server.rules import Condition, DangerRule, KnownGood, deviations
from mcp_server.rundir import open_run
from mcp_server.specs import TrainerSpec

RULES = """
[known_good.interval]
value = 0.0
reason = "no pause between steps"

[known_good.steps]
value = 5
rel_tol = 0.2
reason = "five steps show the curve"

[[danger]]
id = "long-pause"
when = { interval = { gt = 0.5 } }
message = "pauses this long starve the GPU"
fix = "Keep interval at 0."

[[danger]]
id = "crash-early"
when = { fail_at = { ge = 1, le = 2 } }
message = "fails before the first checkpoint"
severity = "fail"
"""


@pytest.fixture
def ruled(scripted):
    spec = scripted / "experiments" / "trainers" / "scripted.toml"
    spec.write_text(spec.read_text() + RULES)
    return scripted


@pytest.mark.parametrize(
    ("cond", "value", "holds"),
    [
        ({"eq": "tile"}, "tile", True),
        ({"ne": "tile"}, "tile", False),
        ({"in": ["wavefield", "fourier"]}, "fourier", True),
        ({"not_in": ["tile"]}, "dense", True),
        ({"gt": 0.1}, 0.05, False),
        ({"ge": 1, "le": 2}, 2, True),
        ({"lt": 1e-4}, 1e-4, False),
        ({"glob": "*synthetic*"}, "data/Synthetic_v2", True),
        ({"gt": 1}, "abc", False),
        ({"eq": 1}, None, False),
    ],
)
def test_conditions(cond, value, holds):
    assert Condition.model_validate(cond).holds(value) is holds


def test_a_rule_needs_every_condition_and_a_valid_id():
    rule = DangerRule(id="blend-exp4", message="m", when={"use_phase_blending": {"eq": True}, "experiment": {"eq": 4}})
    assert rule.fires({"use_phase_blending": True, "experiment": 4})
    assert not rule.fires({"use_phase_blending": True, "experiment": 2})
    with pytest.raises(ValidationError, match="lower-case"):
        DangerRule(id="Bad Id", message="m", when={"x": {"eq": 1}})
    with pytest.raises(ValidationError, match="at least one of"):
        Condition.model_validate({})


def test_rules_must_name_parameters_of_the_spec():
    base = {
        "name": "t",
        "description": "d",
        "command": ["x"],
        "params": {"lr": {"type": "float", "flag": "--lr", "help": "h"}},
    }
    with pytest.raises(ValidationError, match="'renderer', which is not a parameter"):
        TrainerSpec.model_validate(base | {"danger": [{"id": "r", "message": "m", "when": {"renderer": {"eq": 1}}}]})
    with pytest.raises(ValidationError, match="known_good names 'lrr'"):
        TrainerSpec.model_validate(base | {"known_good": {"lrr": {"value": 1e-5, "reason": "r"}}})


def test_deviations_name_the_reason_and_respect_tolerance():
    table = {
        "lr": KnownGood(value=1e-5, reason="7x lower prevents instability"),
        "occ_weight": KnownGood(value=2.7, reason="placement", rel_tol=0.1),
    }
    assert deviations(table, {"lr": 1e-5, "occ_weight": 2.8}) == []
    (line,) = deviations(table, {"lr": 1e-4, "occ_weight": 2.7})
    assert line == "lr=0.0001 (known-good: 1e-05: 7x lower prevents instability)"


def test_preflight_reports_deviations_and_fired_rules(ruled):
    report, _, _ = run_preflight("901", {"interval": 1.0, "steps": 6})
    checks = {c.name: c for c in report.checks}
    assert checks["known-good"].verdict == "warn" and "interval=1.0 (known-good: 0.0" in checks["known-good"].detail
    assert "steps=" not in checks["known-good"].detail  # 6 is within 20% of 5
    pause = checks["danger:long-pause"]
    assert pause.verdict == "warn" and "acknowledge=['long-pause']" in pause.fix
    assert report.danger_fired == ["long-pause"] and report.verdict == "warn"
    clean, _, _ = run_preflight("901")
    assert clean.danger_fired == [] and {c.name: c.verdict for c in clean.checks}["known-good"] == "pass"


def test_launch_needs_each_fired_rule_acknowledged_and_records_it(ruled):
    with pytest.raises(Conflict, match=r"danger rules fired.*long-pause.*acknowledge=\['long-pause'\]"):
        runs.launch("901", {"interval": 0.6})
    with pytest.raises(InvalidInput, match="unknown danger rules \\['typo'\\]"):
        runs.launch("901", {"interval": 0.6}, acknowledge=["typo"])
    assert runs.launch("901", {"interval": 0.6}, dry_run=True).dry_run  # a dry run shows it anyway
    result = runs.launch("901", {"interval": 0.6, "steps": 1}, acknowledge=["long-pause"])
    assert open_run(paths.runs_root(), result.run_id).read_manifest().acknowledged == ["long-pause"]
    pad = next((ruled / ".claude/scratchpad/training-runner").glob("*.md")).read_text()
    assert "acknowledged danger rules: long-pause" in pad


def test_a_fail_rule_cannot_be_acknowledged(ruled):
    with pytest.raises(Conflict, match="pre-flight failed.*fails before the first checkpoint"):
        runs.launch("901", {"fail_at": 2}, acknowledge=["crash-early"])


def test_specs_without_rules_are_unchanged(scripted):
    write_experiment(scripted, "906-x", "scripted", {})
    report, _, _ = run_preflight("906")
    assert "known-good" not in {c.name for c in report.checks} and report.danger_fired == []
