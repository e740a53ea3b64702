import pytest

from conftest import write_experiment
from mcp_server import registry
from mcp_server.errors import InvalidInput, NotFound


@pytest.mark.parametrize("ref", ["1", "001", "001-trm-fast-dev", " 1 "])
def test_bundled_experiment_001_is_found_by_any_of_its_names(project, ref):
    exp = registry.load_experiment(ref)
    assert exp.id == "001-trm-fast-dev" and exp.source == "bundled"
    assert exp.trainer == "trm_nav" and exp.args["dim"] == 64 and exp.args["epochs"] == 30
    assert "Recipe 1" in exp.hypothesis


def test_project_experiment_shadows_the_bundled_one(project):
    write_experiment(project, "001-mine", "trm_nav", {"dim": 32})
    exp = registry.load_experiment("1")
    assert exp.source == "project" and exp.id == "001-mine"


def test_unknown_experiment_lists_what_exists(project):
    with pytest.raises(NotFound, match="no experiment '42'.*001-trm-fast-dev"):
        registry.load_experiment("42")


def test_wrong_slug_names_the_real_one(project):
    with pytest.raises(NotFound, match="is '001-trm-fast-dev'"):
        registry.load_experiment("001-other")


@pytest.mark.parametrize("ref", ["../001", "1; rm -rf /", "", "abc", "0001"])
def test_malformed_reference_is_refused(project, ref):
    with pytest.raises(InvalidInput, match="N, NNN or NNN-slug"):
        registry.load_experiment(ref)


def test_missing_hypothesis_says_to_write_it(project):
    write_experiment(project, "005-nohyp", "trm_nav", {}, hypothesis=None)
    with pytest.raises(NotFound, match="no hypothesis: write .*hypothesis.md"):
        registry.load_experiment("5")


def test_unknown_trainer_lists_the_known_ones(project):
    write_experiment(project, "006-x", "resnet_magic", {})
    with pytest.raises(NotFound, match="unknown trainer 'resnet_magic'; known trainers: .*trm_nav"):
        registry.load_experiment("6")


def test_wrong_type_in_experiment_file_names_the_file_and_parameter(project):
    write_experiment(project, "007-x", "trm_nav", {"dim": "wide"})
    with pytest.raises(InvalidInput, match=r"007-x/experiment.toml: .*'dim' takes an int"):
        registry.load_experiment("7")


def test_unknown_parameter_in_experiment_file(project):
    write_experiment(project, "008-x", "trm_nav", {"hidden": 3})
    with pytest.raises(InvalidInput, match="unknown parameter 'hidden'"):
        registry.load_experiment("8")


def test_unknown_top_level_key_and_bad_toml(project):
    folder = write_experiment(project, "009-x", "trm_nav", {})
    (folder / "experiment.toml").write_text('trainer = "trm_nav"\ntitle = "t"\ntrainr = 1\n')
    with pytest.raises(InvalidInput, match="trainr: Extra inputs"):
        registry.load_experiment("9")
    (folder / "experiment.toml").write_text("trainer = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        registry.load_experiment("9")


def test_list_shows_broken_experiments_with_their_error(project):
    write_experiment(project, "005-nohyp", "trm_nav", {}, hypothesis=None)
    listed = registry.list_experiments()
    broken = [e for e in listed if e.error is not None]
    assert [e.id for e in broken] == ["005-nohyp"]
    assert any(e.error is None and e.id == "001-trm-fast-dev" for e in listed)


def test_every_bundled_experiment_and_trainer_spec_is_valid(project):
    listed = registry.list_experiments()
    broken = [f"{e.id}: {e.error}" for e in listed if e.error is not None]
    assert broken == []
    assert {e.trainer for e in listed} <= set(registry.known_trainers(project))
    for name in registry.known_trainers(project):
        assert registry.load_trainer(name).params


def test_an_experiment_sets_chance_levels_in_range(project):
    folder = write_experiment(project, "010-x", "trm_nav", {"dim": 32})
    toml = folder / "experiment.toml"
    toml.write_text('chance = { "val/acc" = 0.25 }\n' + toml.read_text())
    assert registry.load_experiment("10").chance == {"val/acc": 0.25}
    toml.write_text(toml.read_text().replace("0.25", "25"))
    with pytest.raises(InvalidInput, match=r"010-x/experiment.toml is invalid: chance.val/acc: .*less than or equal"):
        registry.load_experiment("10")
