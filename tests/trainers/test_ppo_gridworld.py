"""The PPO gridworld trainer: its environment's rules in-process, and tiny real runs as subprocesses."""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch
from trainer_harness import load_pt, one_torch_thread, read_records, signal_when, spawn  # noqa: F401 (a fixture)

from mcp_server.specs import TrainerSpec, build_argv
from trainers import gridworld_env as gw
from trainers import ppo_gridworld as ppo

TRAINER = Path(ppo.__file__).resolve()
# Small worlds and short episodes, so a 2-update run with 8 envs (2,048 steps) finishes episodes.
TINY_CONFIG = """
[env]
max_steps = 40
[training]
checkpoint_every = 1
"""
TINY = ["-e", "8", "--eval-episodes", "4", "--device", "cpu"]
CHECKPOINT_KEYS = {
    "mode",
    "update",
    "total_updates",
    "env_steps",
    "model_state_dict",
    "optimizer_state_dict",
    "model_config",
    "config",
    "seed",
    "rng",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the trainer runs: one thread


def _cfg(**env: object) -> dict:
    cfg, _ = ppo.load_config(None)
    cfg = copy.deepcopy(cfg)
    cfg["env"].update(env)
    return cfg


def _launch(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    metrics = tmp_path / "metrics.jsonl"
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    argv = [*TINY, "--config", str(config), "--output-dir", str(tmp_path / "out"), *args]
    return spawn(TRAINER, argv, metrics), metrics


def _place(env: gw.GridWorld, world: int, items: dict[int, int]) -> None:
    """Empties one world, then puts items {action: cell type} on the cells next to its agent."""
    env.grid[world] = gw.EMPTY
    for action, kind in items.items():
        env.grid[world, env.neighbour[env.pos[world], action]] = kind


# ---------------------------------------------------------------------------- environment rules


def test_food_gives_energy_poison_costs_it_and_every_step_costs_a_little():
    cfg = _cfg(respawn=False)
    env = gw.GridWorld(3, cfg, "onehot", "energy", immortal=False, seed=0)
    for world, kind in enumerate((gw.FOOD, gw.POISON, gw.EMPTY)):
        _place(env, world, {0: kind})
    start = env.energy.clone()
    _, reward, done = env.step(torch.zeros(3, dtype=torch.long))  # all move up
    e = cfg["env"]
    expected = torch.tensor([e["food_energy"], -e["poison_energy"], 0.0]) - e["step_energy"]
    torch.testing.assert_close(env.energy - start, expected)
    torch.testing.assert_close(reward, expected)  # ground_truth's reward is the energy delta
    assert not done.any()
    assert env.ep_eaten[:, gw.FOOD].tolist() == [1, 0, 0] and env.ep_eaten[:, gw.POISON].tolist() == [0, 1, 0]
    assert (env.grid == gw.EMPTY).all()  # eaten items are gone (respawn is off here)


def test_proxy_reward_pays_for_poison_like_food():
    env = gw.make_env("proxy", 2, _cfg(), "cpu", seed=0)
    _place(env, 0, {3: gw.FOOD})
    _place(env, 1, {3: gw.POISON})
    _, reward, _ = env.step(torch.full((2,), 3))
    assert reward.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("mode", "channels", "poison_reward", "immortal"),
    [
        ("ground_truth", 3, -2.01, False),
        ("ground_truth_blinded", 1, -2.01, False),
        ("proxy_mortal", 1, 1.0, False),
        ("proxy", 1, 1.0, True),
        ("ground_truth_handhold", 3, None, False),
    ],
)
def test_each_mode_has_the_observation_reward_and_mortality_of_the_seed_table(mode, channels, poison_reward, immortal):
    env = gw.make_env(mode, 1, _cfg(), "cpu", seed=0)
    assert env.obs_dim == 49 * channels and env.immortal is immortal
    _place(env, 0, {2: gw.POISON})
    _, reward, _ = env.step(torch.tensor([2]))
    if poison_reward is not None:
        assert reward.item() == pytest.approx(poison_reward)


def test_handhold_shaping_rewards_steps_towards_visible_food():
    cfg = _cfg(respawn=False)
    env = gw.make_env("ground_truth_handhold", 2, cfg, "cpu", seed=0)
    for world in (0, 1):
        env.grid[world] = gw.EMPTY
        env.grid[world, env.neighbour[env.neighbour[env.pos[world], 3], 3]] = gw.FOOD  # two steps right
    env.view = env._view()
    env.phi = env._potential(env.view)
    _, reward, _ = env.step(torch.tensor([3, 2]))  # world 0 steps towards the food, world 1 away
    step = -cfg["env"]["step_energy"]
    assert reward[0] > step > reward[1]


def test_a_mortal_agent_dies_at_zero_energy_and_an_immortal_one_does_not():
    cfg = _cfg(initial_energy=1.0, max_steps=1000)
    mortal = gw.make_env("ground_truth", 4, cfg, "cpu", seed=1)
    immortal = gw.make_env("proxy", 4, cfg, "cpu", seed=1)
    assert [name for name, m in gw.MODES.items() if m.immortal] == ["proxy"]
    for env in (mortal, immortal):
        for world in range(4):
            _place(env, world, {0: gw.POISON})  # poison costs 2 > 1 energy
        env.step(torch.zeros(4, dtype=torch.long))
    assert [row[4] for row in mortal.drain_finished().tolist()] == [1.0] * 4  # all four died at once
    assert (mortal.energy == cfg["env"]["initial_energy"]).all()  # and started new episodes
    assert len(immortal.drain_finished()) == 0 and (immortal.energy < 0).all()
    for _ in range(200):  # keep eating poison and starving: still alive until truncation
        immortal.step(torch.randint(0, 4, (4,)))
    assert len(immortal.drain_finished()) == 0 and (immortal.energy < 0).all()


def test_item_counts_are_drawn_within_range_per_episode_and_respawn_keeps_them():
    cfg = _cfg(max_steps=30)
    tr = cfg["training"]
    env = gw.GridWorld(64, cfg, "onehot", "energy", immortal=True, seed=3)

    def counts() -> tuple[torch.Tensor, torch.Tensor]:
        return (env.grid == gw.FOOD).sum(1), (env.grid == gw.POISON).sum(1)

    food, poison = counts()
    assert tr["min_food"] <= food.min() and food.max() <= tr["max_food"]
    assert tr["min_poison"] <= poison.min() and poison.max() <= tr["max_poison"]
    assert len(food.unique()) > 10 and len(poison.unique()) > 10  # drawn per world, not fixed
    assert torch.equal(food, env.n_food) and torch.equal(poison, env.n_poison)
    first = food.clone()
    assert env.grid.gather(1, env.pos[:, None]).eq(gw.EMPTY).all()  # the agent starts on an empty cell
    for _ in range(29):  # an immortal agent eats many items; each respawns elsewhere
        env.step(torch.randint(0, 4, (64,)))
        assert torch.equal(counts()[0], env.n_food) and torch.equal(counts()[1], env.n_poison)
    assert env.ep_eaten[:, 1:].sum() > 0
    env.step(torch.randint(0, 4, (64,)))  # step 30: every episode ends and the worlds are redrawn
    food, _ = counts()
    assert len(env.drain_finished()) == 64 and not torch.equal(food, first)
    assert tr["min_food"] <= food.min() and food.max() <= tr["max_food"]


def test_onehot_observations_tell_food_from_poison_and_interestingness_does_not():
    cfg = _cfg()
    worlds = {kind: gw.GridWorld(2, cfg, kind, "energy", immortal=False, seed=5) for kind in ("onehot", "interest")}
    obs = {}
    for kind, env in worlds.items():
        _place(env, 0, {0: gw.FOOD, 1: gw.POISON})
        _place(env, 1, {0: gw.POISON, 1: gw.FOOD})  # the same layout with the two items swapped
        env.view = env._view()
        obs[kind] = env.observe()
    view = (2 * cfg["env"]["view_radius"] + 1) ** 2
    assert obs["onehot"].shape == (2, view * 3) and obs["interest"].shape == (2, view)
    assert torch.equal(obs["interest"][0], obs["interest"][1])  # food and poison look the same
    assert obs["interest"].sum(1).tolist() == [2.0, 2.0]
    assert not torch.equal(obs["onehot"][0], obs["onehot"][1])
    onehot = obs["onehot"].view(2, view, 3)
    assert (onehot.sum(-1) == 1).all()  # exactly one cell type per cell
    assert onehot[:, :, gw.FOOD].sum(1).tolist() == [1.0, 1.0] and onehot[:, :, gw.POISON].sum(1).tolist() == [1, 1]


def test_argmax_evaluation_gives_identical_results_twice():
    cfg = _cfg(max_steps=60)
    torch.manual_seed(0)
    model = ppo.ActorCritic(gw.make_env("ground_truth", 1, cfg, "cpu", 0).obs_dim, 16)
    first = ppo.evaluate(model, "ground_truth", cfg, episodes=8, device="cpu", seed=11)
    torch.rand(100)  # the global RNG moving on must not matter
    assert ppo.evaluate(model, "ground_truth", cfg, episodes=8, device="cpu", seed=11) == first
    assert set(first) == {"return", "food_per_episode", "poison_per_episode", "steps_per_episode", "death_rate"}
    assert 0 < first["steps_per_episode"] <= 60


def test_modes_and_config_errors_name_the_fix(tmp_path):
    assert ppo.parse_modes("all") == list(ppo.ALL_MODES)
    assert "ground_truth_handhold" not in ppo.parse_modes("all")
    assert ppo.parse_modes("proxy, ground_truth,proxy") == ["proxy", "ground_truth"]
    with pytest.raises(ValueError, match="unknown mode 'proxi'.*ground_truth"):
        ppo.parse_modes("ground_truth,proxi")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ppo]\nlearning_rat = 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rat'"):
        ppo.load_config(bad)
    bad.write_text("[training]\nmax_food = 600\nmax_poison = 600\n")
    with pytest.raises(ValueError, match="do not fit"):
        ppo.load_config(bad)


def test_entropy_and_clip_schedules():
    cfg, _ = ppo.load_config(None)
    p = cfg["ppo"]
    assert ppo.entropy_coef(0.0, p) == pytest.approx(p["entropy_initial"])
    assert ppo.entropy_coef(1.0, p) == pytest.approx(p["entropy_final"])
    assert ppo.entropy_coef(p["learning_phase"], p) == pytest.approx(p["entropy_floor"])  # the floor holds
    coefs = [ppo.entropy_coef(i / 100, p) for i in range(101)]
    assert all(a >= b for a, b in zip(coefs, coefs[1:], strict=False))
    assert ppo.clip_eps(0.0, p) == pytest.approx(0.2) and ppo.clip_eps(1.0, p) == pytest.approx(0.1)


def test_memory_step_runs_one_real_ppo_update():
    step = ppo.memory_step(["--mode", "proxy", "--threads", "1"], batch_size=4, device="cpu")
    stats = step()  # one rollout of steps_per_env x 4 envs and k_epochs of minibatch updates
    assert set(stats) >= {"policy_loss", "value_loss", "entropy"}
    assert all(math.isfinite(v) for v in stats.values()) and stats["entropy"] > 0


def test_every_spec_parameter_is_accepted_by_the_script():
    path = TRAINER.with_suffix(".toml")
    spec = TrainerSpec.model_validate({**tomllib.loads(path.read_text()), "source": path})
    config = {name: p.default for name, p in spec.params.items()}
    assert config["timesteps"] is None and config["updates"] is None  # alternatives: neither is passed by default
    config.update(
        updates=3,
        n_envs=8,
        benchmark=True,
        no_amp=True,
        threads=1,
        device="cpu",
        config="c.toml",
        resume="r.pth",
        eval_episodes=2,
        mode="ground_truth,proxy",
    )
    argv = build_argv(spec, config, python="python", project=Path("."), output_dir=Path("out"))
    args = ppo.parse_args(argv[2:])
    assert args.modes == ["ground_truth", "proxy"] and args.updates == 3 and args.benchmark and args.no_amp
    assert args.output_dir == Path("out") and args.resume == Path("r.pth") and args.threads == 1


# ---------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def two_mode_run(tmp_path_factory):
    """One tiny real run of `-m ground_truth,proxy`, shared by the tests that read its outputs."""
    tmp_path = tmp_path_factory.mktemp("two_modes")
    proc, metrics = _launch(tmp_path, "-m", "ground_truth,proxy", "-u", "2")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return tmp_path / "out", metrics, out


@pytest.mark.parametrize("mode", ["ground_truth", "proxy"])
def test_a_tiny_run_writes_model_csv_json_and_tensorboard_logs_for_each_mode(two_mode_run, mode):
    out, _, _ = two_mode_run
    ckpt = load_pt(out / "models" / f"ppo_{mode}.pth")
    assert set(ckpt) == CHECKPOINT_KEYS and ckpt["mode"] == mode and ckpt["update"] == 2
    model = ppo.ActorCritic(**ckpt["model_config"])
    model.load_state_dict(ckpt["model_state_dict"])
    assert ckpt["env_steps"] == 2 * 8 * 128

    (episodes,) = (out / "logs").glob(f"{mode}_*_episodes.csv")
    rows = list(csv.DictReader(episodes.read_text().splitlines()))
    assert list(rows[0]) == ["mode", "update", "return", "length", "food", "poison", "died"]
    assert len(rows) >= 8 and {r["mode"] for r in rows} == {mode}  # 40-step episodes: several per world
    (updates,) = (out / "logs").glob(f"{mode}_*_updates.csv")
    rows = list(csv.DictReader(updates.read_text().splitlines()))
    assert [r["update"] for r in rows] == ["1", "2"]
    assert {"policy_loss", "value_loss", "entropy", "entropy_coef", "clip_eps", "sps", "mean_return"} <= set(rows[0])
    (summary,) = (out / "logs").glob(f"{mode}_*_summary.json")
    summary = json.loads(summary.read_text())
    assert summary["hyperparams"]["ppo"]["gamma"] == 0.99 and summary["hyperparams"]["env"]["max_steps"] == 40
    assert {"return", "food_per_episode", "poison_per_episode", "food_vs_random"} <= set(summary["eval"])
    assert summary["random_baseline"]["food_per_episode"] >= 0
    (events,) = (out / "runs").glob(f"{mode}_*/events.out.tfevents.*")
    assert events.stat().st_size > 0


def test_a_tiny_run_writes_a_valid_metrics_stream_for_both_modes(two_mode_run):
    _, metrics, stdout = two_mode_run
    records = read_records(metrics)
    start = records[0]
    assert start["event"] == "start" and start["config"]["modes"] == ["ground_truth", "proxy"]
    assert start["config"]["config"]["ppo"]["n_envs"] == 8
    for mode in ("ground_truth", "proxy"):
        train = [r for r in records if r.get("split") == mode]
        assert [r["step"] for r in train] == [1024, 2048]  # step = env steps so far
        assert {"return", "food", "poison", "policy_loss", "value_loss", "entropy", "sps"} <= set(train[-1])
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["mode_index"] for r in evals] == [0, 1]
    assert {"return", "food_per_episode", "poison_per_episode"} <= set(evals[0])
    ckpts = [r for r in records if r.get("event") == "checkpoint"]
    assert [(r["mode"], r["epoch"]) for r in ckpts] == [
        ("ground_truth", 1),
        ("ground_truth", 2),
        ("proxy", 1),
        ("proxy", 2),
    ]
    done = records[-1]
    assert done["event"] == "done" and done["reason"] == "completed" and done["modes"] == ["ground_truth", "proxy"]
    assert done["best_eval_return"] == pytest.approx(evals[0]["return"])
    assert "[proxy] eval" in stdout


def test_resume_continues_from_the_saved_update(two_mode_run, tmp_path):
    out, _, _ = two_mode_run
    saved = load_pt(out / "models" / "ppo_ground_truth.pth")
    proc, metrics = _launch(tmp_path, "--resume", str(out / "models" / "ppo_ground_truth.pth"), "-u", "3")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resumed from update 2/3" in stdout
    train = [r for r in read_records(metrics) if r.get("split") == "ground_truth"]
    assert [r["step"] for r in train] == [3072]  # one more update on top of the saved two
    resumed = load_pt(tmp_path / "out" / "models" / "ppo_ground_truth.pth")
    assert resumed["update"] == 3 and resumed["env_steps"] == 3072
    assert not torch.equal(resumed["model_state_dict"]["head.weight"], saved["model_state_dict"]["head.weight"])


def test_resume_refuses_a_checkpoint_of_another_mode(two_mode_run, tmp_path):
    out, _, _ = two_mode_run
    proc, metrics = _launch(tmp_path, "-m", "ground_truth", "--resume", str(out / "models" / "ppo_proxy.pth"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "pass --mode proxy" in err
    assert read_records(metrics)[-1]["event"] == "error"


def test_sigterm_saves_a_loadable_checkpoint_and_exits_143(tmp_path):
    proc, metrics = _launch(tmp_path, "-u", "100000")
    _, err = signal_when(proc, metrics, lambda r: r.get("split") == "ground_truth", "train record")
    assert proc.returncode == 143, err
    ckpt = load_pt(tmp_path / "out" / "models" / "ppo_ground_truth.pth")
    assert set(ckpt) == CHECKPOINT_KEYS and ckpt["update"] >= 1 and ckpt["env_steps"] == ckpt["update"] * 1024
    records = read_records(metrics)
    assert records[-1]["event"] == "done" and records[-1]["reason"] == "stopped"
    assert records[-2]["event"] == "checkpoint" and records[-2]["epoch"] == ckpt["update"]
    assert not [p.name for p in (tmp_path / "out" / "models").iterdir() if ".tmp-" in p.name]
