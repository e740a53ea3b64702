import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server import registry
from mcp_server.errors import InvalidInput
from mcp_server.specs import REMEDY_FLAG_RE, build_argv, coerce_value, resolve_config


@pytest.fixture
def spec():
    return registry.load_trainer("trm_nav", Path("/nonexistent-project"))


def test_numeric_strings_are_accepted_as_numbers(spec):
    assert coerce_value("lr", spec.params["lr"], "5e-4", None) == 5e-4
    assert coerce_value("dim", spec.params["dim"], "128", None) == 128


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("dim", "big", "takes an int"),
        ("dim", 64.5, "takes an int"),
        ("dim", True, "boolean"),
        ("dim", 4, "from 8 to 2048"),
        ("lr", float("nan"), "finite"),
        ("device", "tpu", "choose one of"),
        ("device", "--evil", "may not start with"),
    ],
)
def test_bad_values_are_refused_with_the_expectation(spec, name, value, needle):
    with pytest.raises(InvalidInput, match=needle):
        coerce_value(name, spec.params[name], value, None)


def test_strings_cannot_become_flags_or_extra_lines(spec):
    param = spec.params["device"].model_copy(update={"choices": None})
    for bad in ("--lr=1", "-x", "cpu\n--lr", "a\x00b", "x" * 5000):
        with pytest.raises(InvalidInput):
            coerce_value("device", param, bad, None)


def test_unknown_parameter_lists_the_known_ones(spec):
    with pytest.raises(InvalidInput, match="unknown parameter 'dimm'.*known parameters: .*batch_size"):
        resolve_config(spec, [("overrides", {"dimm": 3})], Path("/tmp"))


def test_later_layers_win_and_defaults_fill_the_rest(spec):
    config = resolve_config(spec, [("exp", {"dim": 32, "lr": 0.01}), ("overrides", {"lr": 0.002})], Path("/tmp"))
    assert config["dim"] == 32 and config["lr"] == 0.002 and config["depth"] == spec.params["depth"].default


def test_argv_is_the_template_then_one_flag_per_value(spec, tmp_path):
    config = resolve_config(spec, [("o", {"dim": 32, "lr": 1e-5})], tmp_path)
    argv = build_argv(spec, config, python="/py", project=tmp_path, output_dir=tmp_path / "ck")
    assert argv[:2] == ["/py", str(spec.trainer_dir / "trm_nav.py")]
    assert argv[argv.index("--dim") + 1] == "32"
    assert argv[argv.index("--lr") + 1] == "1e-05"
    assert argv[-2:] == ["--checkpoint-dir", str(tmp_path / "ck")]


def test_path_parameters_stay_inside_the_project(spec, tmp_path):
    param = spec.params["device"].model_copy(update={"type": "path", "choices": None})
    (tmp_path / "data").mkdir()
    assert coerce_value("data", param, "data", tmp_path) == "data"
    with pytest.raises(InvalidInput, match="outside"):
        coerce_value("data", param, "../../etc", tmp_path)


def test_an_override_of_one_exclusive_parameter_clears_the_other(project):
    from mcp_server import registry

    spec = registry.load_trainer("ppo_gridworld")
    config = resolve_config(spec, [("experiment", {"updates": 200}), ("overrides", {"timesteps": 50000})], project)
    assert config["timesteps"] == 50000 and config["updates"] is None
    with pytest.raises(InvalidInput, match="set only one of"):
        resolve_config(spec, [("overrides", {"timesteps": 1, "updates": 2})], project)


PLACEHOLDER_SPEC = """
name = "typo"
description = "A spec whose template names a placeholder expand does not fill."
command = {command}

[params.data_dir]
type = "path"
flag = "--data-dir"
default = "data"
help = "Data."
{prepare}
"""


@pytest.mark.parametrize(
    ("command", "prepare", "needle"),
    [
        (
            '["{python}", "{trainer_dir}/train.py", "--root", "{project}"]',
            "",
            "command uses the unknown placeholder {project}",
        ),
        ('["{python}", "{trainerdir}/train.py"]', "", "unknown placeholder {trainerdir}"),
        (
            '["{python}", "train.py"]',
            'prepare = ["{python}", "make.py", "{path}"]',
            "prepare uses the unknown placeholder {path}",
        ),
    ],
)
def test_an_unknown_placeholder_is_refused_at_spec_load_naming_the_allowed_ones(project, command, prepare, needle):
    folder = project / "experiments" / "trainers"
    folder.mkdir(parents=True)
    (folder / "typo.toml").write_text(PLACEHOLDER_SPEC.format(command=command, prepare=prepare))
    with pytest.raises(InvalidInput) as raised:
        registry.load_trainer("typo", project)
    assert needle in str(raised.value) and "{python}, {trainer_dir}, {project_dir}" in str(raised.value)


def test_known_placeholders_and_other_braces_load(project):
    folder = project / "experiments" / "trainers"
    folder.mkdir(parents=True)
    command = '["{python}", "-c", "import sys; print({1: 2})", "{trainer_dir}", "{project_dir}"]'
    (folder / "typo.toml").write_text(
        PLACEHOLDER_SPEC.format(command=command, prepare='prepare = ["{python}", "{project_dir}/make.py", "{value}"]')
    )
    spec = registry.load_trainer("typo", project)
    assert spec.command[2] == "import sys; print({1: 2})" and spec.params["data_dir"].prepare[-1] == "{value}"


def _spec_with_remedies(project, remedies: str) -> None:
    folder = project / "experiments" / "trainers"
    folder.mkdir(parents=True, exist_ok=True)
    command = '["{python}", "train.py"]'
    text = PLACEHOLDER_SPEC.format(command=command, prepare="")
    (folder / "typo.toml").write_text(text + "\n[remedies]\n" + remedies)


def test_spec_remedies_load_by_rule_id(project):
    _spec_with_remedies(project, 'lr_too_high = "lower the LR, keep --data-dir on fast disk"\n')
    assert registry.load_trainer("typo", project).remedies == {
        "lr_too_high": "lower the LR, keep --data-dir on fast disk"
    }


@pytest.mark.parametrize(
    ("remedies", "needle"),
    [
        ('overfit = "--dropout 0.2"\n', "names the rule 'overfit'; the rules are nonfinite, lr_too_high, spike"),
        (
            'overfitting = "--dropout 0.2"\n',
            "overfitting suggests --dropout, which is no parameter's flag; the flags are --data-dir",
        ),
        ('plateau = ""\n', "remedies.plateau: String should have at least 1 character"),
        ('plateau = "' + "x" * 301 + '"\n', "remedies.plateau: String should have at most 300 characters"),
    ],
)
def test_spec_remedies_name_known_rules_and_the_spec_s_own_flags(project, remedies, needle):
    _spec_with_remedies(project, remedies)
    with pytest.raises(InvalidInput) as raised:
        registry.load_trainer("typo", project)
    assert needle in str(raised.value)


def test_every_flag_a_bundled_spec_s_remedies_suggest_is_one_its_trainer_parses(tmp_path):
    """The flags in the bundled specs' [remedies] are their parameters' (checked at load), and those
    are flags the trainer's own argparse takes: asked of the real script with --help, all at once."""
    names = ("trm_nav", "autoencoder", "gauss_decoder", "ppo_gridworld")
    specs = {n: registry.load_trainer(n, tmp_path) for n in names}
    procs = {
        n: subprocess.Popen(
            [sys.executable, str(s.trainer_dir / f"{n}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for n, s in specs.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        parsed = set(re.findall(r"--[A-Za-z0-9][A-Za-z0-9_-]*", out))
        suggested = {f for text in specs[name].remedies.values() for f in REMEDY_FLAG_RE.findall(text)}
        assert suggested and suggested <= parsed, (name, suggested - parsed)
        assert {p.flag for p in specs[name].params.values()} <= parsed, name
