"""Train PPO agents in a vectorised food/poison gridworld, with true or proxy rewards (seed 004).

Usage:
    python trainers/ppo_gridworld.py -m ground_truth -u 128       # one mode, 128 PPO updates
    python trainers/ppo_gridworld.py -m ground_truth,proxy -u 300  # two modes, one after the other
    python trainers/ppo_gridworld.py -m all -t 5000000             # the four default modes, 5M steps each
    python trainers/ppo_gridworld.py -m ground_truth -u 20 -b      # throughput only, saves nothing

The world (gridworld_env.py): n_envs independent 32x32 tori, all stepped together as batched tensor ops (no Python
loop over environments). Each holds one agent and a number of food and poison items, drawn per
episode from [min_food, max_food] and [min_poison, max_poison]. Moving onto an item eats it:
food gives energy, poison costs energy, every step costs a little, and a mortal agent dies when
its energy reaches 0. An eaten item respawns at a random empty cell, so the counts stay constant
within an episode. The agent sees the 7x7 cells around itself and moves up, down, left or right.

Modes (seed 004's table) differ in what the agent sees, what it is rewarded for, and whether it
can die while training:

    mode                   observation                   reward                  dies in training
    ground_truth           cell types, one-hot           energy delta            yes
    ground_truth_blinded   interestingness               energy delta            yes
    proxy_mortal           interestingness               items eaten             yes
    proxy                  interestingness               items eaten             no: the Goodhart failure
    ground_truth_handhold  cell types, one-hot           energy delta + shaping  yes (not in `all`)

One-hot: three 0/1 channels (empty, food, poison) per view cell. Interestingness: one channel,
1 for food and for poison alike, so the agent cannot tell them apart.
Shaping (handhold only) is potential-based, gamma * phi(s') - phi(s) with phi = -0.1 x the steps to
the nearest visible food, so it speeds learning without changing which policy is best.

Every mode is evaluated the same way at the end: the argmax policy in a mortal world, scored on
the true objective (energy gained), with food and poison eaten per episode. `proxy` learns to eat
everything "interesting", poison included, because nothing in its training ever cost it anything.

Configuration: trainers/ppo_gridworld.default.toml, then the TOML file given by --config PATH
(if it exists), then these flags. Outputs, under --output-dir (default $TRAINGUARD_RUN_DIR/
checkpoints, else the current directory):
    models/ppo_{mode}.pth                   model, optimizer, update count and RNG state (atomic)
    logs/{mode}_{timestamp}_episodes.csv    one row per finished training episode
    logs/{mode}_{timestamp}_updates.csv     one row per PPO update: losses, entropy, schedules, sps
    logs/{mode}_{timestamp}_summary.json    hyperparameters, timings, evaluation and random baseline
    runs/{mode}_{timestamp}/                TensorBoard events
--benchmark writes none of these and skips the evaluation. Under trainguard, $TRAINGUARD_METRICS receives a start event,
one record per update with split = the mode name, one split "eval" record per mode, checkpoint
events and a done event (see trainkit.py). SIGTERM/SIGINT stops after the current update: the
current mode's model is saved, then the process exits with 143 or 130.

Reproducibility: --seed fixes the initial weights, the worlds and the action sampling (Gumbel-max
from torch's generator, not Categorical/multinomial). On the CPU with one thread a run repeats bit
for bit; on a GPU, kernels may differ in the last bits. Evaluation takes the argmax action in
worlds drawn from their own seed, so it is deterministic for given weights.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import tomllib
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

if str(Path(__file__).resolve().parent) not in sys.path:  # lets tests import this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridworld_env import EPISODE_FIELDS, MODES, MOVES, GridWorld, make_env  # noqa: E402

ACTION_NAMES = ("up", "down", "left", "right")  # MOVES' order
from trainkit import (  # noqa: E402
    MetricsStream,
    StopFlag,
    atomic_write_json,
    load_checkpoint,
    pick_device,
    restore_rng,
    rng_state,
    run_trainer,
    save_checkpoint,
    seed_everything,
)

DEFAULTS_FILE = Path(__file__).resolve().with_name("ppo_gridworld.default.toml")
ROLLING_EPISODES = 100  # train records report means over this many latest episodes
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
RESUME_KEYS = ("mode", "update", "total_updates", "env_steps", "model_state_dict", "optimizer_state_dict", "rng")
ALL_MODES = ("ground_truth", "ground_truth_blinded", "proxy_mortal", "proxy")  # what `-m all` trains


# ---------------------------------------------------------------------------- configuration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line. Flags left out stay None and fall back to the config files."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    arg(
        "-m",
        "--mode",
        default="ground_truth",
        help=f"a mode ({', '.join(MODES)}), `all` (= {', '.join(ALL_MODES)}) or a comma list; "
        "several modes train one after another",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-u", "--updates", type=int, help="PPO updates per mode (default: [training] updates, 128)")
    budget.add_argument(
        "-t",
        "--timesteps",
        type=int,
        help="environment steps per mode, rounded up to whole updates (instead of --updates)",
    )
    arg("-e", "--n-envs", type=int, help="parallel environments (default: [ppo] n_envs, 192)")
    arg("--seed", type=int, default=42, help="seed for worlds, initial weights and action sampling")
    arg(
        "-b",
        "--benchmark",
        action="store_true",
        help="measure throughput (env only, rollout, update, end to end); save no model, logs or eval",
    )
    arg("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA (never used on CPU)")
    arg(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="none",
        help="torch.compile the network with this mode; none (default) does not compile",
    )
    arg("--device", help="auto, cpu, cuda, cuda:N or mps (default: [runtime] device, auto)")
    arg("--threads", type=int, help="CPU threads for torch; 0 keeps torch's default (default: [runtime] threads, 1)")
    arg(
        "--output-dir",
        type=Path,
        default=Path(os.environ["TRAINGUARD_RUN_DIR"]) / "checkpoints"
        if os.environ.get("TRAINGUARD_RUN_DIR")
        else Path("."),
        help="where models/, logs/ and runs/ go (default: $TRAINGUARD_RUN_DIR/checkpoints, else .)",
    )
    arg("--config", type=Path, help="TOML file overriding ppo_gridworld.default.toml; read only if it exists")
    arg("--resume", type=Path, help="a models/ppo_{mode}.pth to continue from (its mode must be among --mode)")
    arg("--eval-episodes", type=int, help="argmax evaluation episodes per mode (default: [training] eval_episodes)")
    args = p.parse_args(argv)
    try:
        args.modes = parse_modes(args.mode)
    except ValueError as exc:
        p.error(str(exc))
    for name in ("updates", "timesteps", "n_envs", "eval_episodes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 0:
        p.error("--threads must be 0 (torch's default) or more")
    return args


def parse_modes(text: str) -> list[str]:
    """`all`, one mode or a comma list -> the list of modes, in order, without repeats."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    modes: list[str] = []
    for name in names:
        for mode in ALL_MODES if name == "all" else (name,):
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}, all, or a comma list")
            if mode not in modes:
                modes.append(mode)
    if not modes:
        raise ValueError("--mode is empty; pass a mode, all, or a comma list")
    return modes


def load_config(path: Path | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The default config, overlaid with ``path`` when it exists; returns it and the files read.

    Raises:
        ValueError: for an unknown table or key, a value of the wrong type, or an inconsistent range.
    """
    with DEFAULTS_FILE.open("rb") as f:
        cfg = tomllib.load(f)
    read = [str(DEFAULTS_FILE)]
    if path is not None and Path(path).is_file():
        with Path(path).open("rb") as f:
            user = tomllib.load(f)
        read.append(str(path))
        for table, values in user.items():
            if table not in cfg or not isinstance(values, dict):
                raise ValueError(f"{path}: unknown table [{table}]; known tables: {', '.join(cfg)}")
            for key, value in values.items():
                if key not in cfg[table]:
                    raise ValueError(f"{path}: unknown key {key!r} in [{table}]; known: {', '.join(cfg[table])}")
                cfg[table][key] = _typed(f"{path}: [{table}] {key}", cfg[table][key], value)
    elif path is not None:
        print(f"Note: config file {path} not found; using the defaults", flush=True)
    check_config(cfg)
    return cfg, read


def _typed(where: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(default, bool):
            raise ValueError(f"{where} must be {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    if type(value) is not type(default):
        raise ValueError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


def check_config(cfg: dict[str, dict[str, Any]]) -> None:
    """Raises ValueError with the fix for settings that cannot work together."""
    env, tr, ppo = cfg["env"], cfg["training"], cfg["ppo"]
    cells = env["grid_size"] ** 2
    if env["grid_size"] < 3 or env["view_radius"] < 1:
        raise ValueError("need grid_size >= 3 and view_radius >= 1")
    for kind in ("food", "poison"):
        if not 0 <= tr[f"min_{kind}"] <= tr[f"max_{kind}"]:
            raise ValueError(f"need 0 <= min_{kind} <= max_{kind}, got {tr[f'min_{kind}']} and {tr[f'max_{kind}']}")
    if tr["max_food"] + tr["max_poison"] > cells - 1:
        raise ValueError(
            f"max_food + max_poison = {tr['max_food'] + tr['max_poison']} items do not fit a "
            f"{env['grid_size']}x{env['grid_size']} grid with an agent; lower them or raise grid_size"
        )
    for key in ("steps_per_env", "n_envs", "n_minibatches", "k_epochs", "hidden_size", "hidden_layers"):
        if ppo[key] < 1:
            raise ValueError(f"[ppo] {key} must be at least 1")
    if ppo["n_envs"] * ppo["steps_per_env"] < ppo["n_minibatches"]:
        raise ValueError("[ppo] n_minibatches exceeds the samples in a rollout (n_envs x steps_per_env)")
    if not 0.0 <= ppo["learning_phase"] <= 1.0:
        raise ValueError("[ppo] learning_phase is a fraction of training, from 0 to 1")
    if cfg["runtime"]["threads"] < 0:
        raise ValueError("[runtime] threads must be 0 (torch's default) or more")
    if min(ppo["entropy_initial"], ppo["entropy_final"]) <= 0:
        raise ValueError("[ppo] entropy_initial and entropy_final must be positive (the decay is geometric)")


def resolve(args: argparse.Namespace, cfg: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Applies the command-line overrides to a config: flags win over both files."""
    if args.n_envs is not None:
        cfg["ppo"]["n_envs"] = args.n_envs
    if args.eval_episodes is not None:
        cfg["training"]["eval_episodes"] = args.eval_episodes
    if args.device is not None:
        cfg["runtime"]["device"] = args.device
    if args.threads is not None:
        cfg["runtime"]["threads"] = args.threads
    rollout = cfg["ppo"]["n_envs"] * cfg["ppo"]["steps_per_env"]
    if args.timesteps is not None:
        cfg["training"]["updates"] = math.ceil(args.timesteps / rollout)
    elif args.updates is not None:
        cfg["training"]["updates"] = args.updates
    check_config(cfg)
    return cfg


# ---------------------------------------------------------------------------- model


class ActorCritic(nn.Module):
    """An MLP trunk (ReLU) shared by one linear head for both action logits and value.

    One head matmul instead of two keeps the per-step cost down; the small network is what lets
    PPO approach 100K environment steps per second on one CPU core.
    """

    def __init__(self, obs_dim: int, hidden_size: int = 64, n_actions: int = len(MOVES), hidden_layers: int = 1):
        super().__init__()
        self.n_actions = n_actions
        layers: list[nn.Module] = []
        for i in range(hidden_layers):  # ReLU rather than the usual tanh: tanh is a fifth of an update's CPU time
            layers += [nn.Linear(obs_dim if i == 0 else hidden_size, hidden_size), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_size if hidden_layers else obs_dim, n_actions + 1)
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
        # Near-zero policy rows start the policy uniform; the value row gets the usual gain of 1.
        nn.init.orthogonal_(self.head.weight[:n_actions], 0.01)
        nn.init.orthogonal_(self.head.weight[n_actions:], 1.0)
        nn.init.zeros_(self.head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # obs: (B, D)
        """Action logits, action-major (A, B), and values (B,).

        Action-major because softmax and sums over a first dim of size 4 run ~3x faster on the CPU
        than over a last dim of size 4; the head's matmul writes that layout at no extra cost.
        """
        h = self.trunk(obs)  # (B, H)
        out = torch.addmm(self.head.bias[:, None], self.head.weight, h.t()).float()  # (A+1, B); float() undoes autocast
        return out[: self.n_actions], out[self.n_actions]  # (A, B), (B,)


def memory_step(argv: list[str], batch_size: int, device: str = "cpu"):
    """One PPO update as the loop runs it, for pre-flight's memory estimate (trainers/memprobe.py).

    The "batch" is --n-envs: the worlds, the rollout buffers (steps_per_env x n_envs) and the
    minibatches all grow with it. Builds the first mode's worlds, model and fused Adam.

    Returns:
        A closure running one rollout, its advantages and the k_epochs of minibatch updates.
    """
    args = parse_args([*argv, "--n-envs", str(batch_size)])
    cfg, _ = load_config(args.config)
    cfg = resolve(args, cfg)
    ppo, dev = cfg["ppo"], torch.device(device)
    env = make_env(args.modes[0], ppo["n_envs"], cfg, device, seed=args.seed)
    model = ActorCritic(env.obs_dim, ppo["hidden_size"], hidden_layers=ppo["hidden_layers"]).to(dev)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=ppo["learning_rate"], eps=1e-5, fused=dev.type in ("cpu", "cuda"))
    obs_buf = torch.empty(ppo["steps_per_env"], env.n, env.obs_dim, device=dev)  # (T, N, D), reused
    state = {"obs": env.observe()}

    def step() -> dict[str, float]:
        buf, state["obs"] = collect_rollout(model, env, state["obs"], obs_buf, ppo["gamma"], False)
        adv, returns = gae(buf, ppo["gamma"], ppo["gae_lambda"])
        return ppo_update(
            model, params, optimizer, buf, adv, returns, ppo, ppo["eps_clip"], ppo["entropy_initial"], False
        )

    return step


def entropy_coef(progress: float, ppo: dict) -> float:
    """Entropy bonus at ``progress`` in [0, 1].

    Geometric decay from entropy_initial, never below entropy_floor until ``learning_phase``,
    then geometric decay from there to entropy_final at the last update. The floor keeps the
    policy from collapsing onto one action before it has learnt where food is; the tail lets the
    last updates sharpen it.
    """
    c0, c1, floor, phase = ppo["entropy_initial"], ppo["entropy_final"], ppo["entropy_floor"], ppo["learning_phase"]
    if progress <= phase:
        return max(c0 * (c1 / c0) ** progress, floor)
    start = max(c0 * (c1 / c0) ** phase, floor)
    return start * (c1 / start) ** ((progress - phase) / (1.0 - phase))


def clip_eps(progress: float, ppo: dict) -> float:
    """PPO clip range, linear from eps_clip to eps_clip_final."""
    return ppo["eps_clip"] + (ppo["eps_clip_final"] - ppo["eps_clip"]) * progress


@dataclass
class Rollout:
    """One rollout's tensors, (T, N) each, plus obs (T, N, D) and the bootstrap value (N,)."""

    obs: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    next_value: torch.Tensor


def collect_rollout(
    policy: nn.Module, env: GridWorld, obs: torch.Tensor, obs_buf: torch.Tensor, gamma: float, amp: bool
) -> tuple[Rollout, torch.Tensor]:
    """Runs len(obs_buf) env steps with actions sampled from the policy; returns the rollout and the last obs.

    ``obs_buf`` (T, N, D) is reused from rollout to rollout: a fresh 14 MB tensor each time would
    cost page faults worth a tenth of the rollout on the CPU. The small (T, N) columns are
    collected in lists and stacked once at the end, which is cheaper than a copy per step.
    """
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("actions", "logp", "values", "rewards", "dones")}
    with torch.no_grad(), torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=amp):
        for t in range(len(obs_buf)):
            obs_buf[t] = obs
            logits, value = policy(obs)  # (A, N), (N,)
            logp_all = F.log_softmax(logits, dim=0)  # (A, N)
            # Gumbel-max draws from the softmax in a few plain ops, without Categorical's validation.
            action = (logp_all - torch.log(-torch.log(torch.rand_like(logp_all)))).argmax(dim=0)  # (N,)
            obs, reward, done = env.step(action, gamma)
            logp = logp_all.gather(0, action[None]).squeeze(0)  # (N,)
            for key, x in zip(cols, (action, logp, value, reward, done), strict=True):
                cols[key].append(x)
        next_value = policy(obs)[1]
    stacked = {k: torch.stack(v) for k, v in cols.items()}  # (T, N) each
    stacked["dones"] = stacked["dones"].float()
    return Rollout(obs=obs_buf, **stacked, next_value=next_value), obs


def gae(buf: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and value targets, (T, N) each.

    An episode that ends on step t cuts the trace there (dones[t] = 1). Truncation is treated
    like death: the value net cannot see the step counter, so bootstrapping past it buys little.
    """
    adv = torch.zeros_like(buf.rewards)
    last = torch.zeros_like(buf.next_value)
    for t in reversed(range(len(buf.rewards))):
        next_value = buf.next_value if t == len(buf.rewards) - 1 else buf.values[t + 1]
        alive = 1.0 - buf.dones[t]
        delta = buf.rewards[t] + gamma * next_value * alive - buf.values[t]
        last = delta + gamma * lam * alive * last
        adv[t] = last
    return adv, adv + buf.values


def ppo_update(
    policy: nn.Module,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    buf: Rollout,
    adv: torch.Tensor,
    returns: torch.Tensor,
    ppo: dict,
    eps: float,
    ent_coef: float,
    amp: bool,
) -> dict[str, float]:
    """k_epochs passes of clipped-surrogate PPO over the rollout in shuffled minibatches."""
    b_obs = buf.obs.flatten(0, 1)  # (B, D) with B = T * N
    b_act, b_logp, b_adv, b_ret = (x.flatten() for x in (buf.actions, buf.logp, adv, returns))  # (B,) each
    size = len(b_act)
    sums = torch.zeros(6, device=b_obs.device)  # policy loss, value loss, entropy, kl, clip frac, count
    for _ in range(ppo["k_epochs"]):
        for mb in torch.randperm(size, device=b_obs.device).chunk(ppo["n_minibatches"]):
            # index_select, not b_obs[mb]: the generic indexing kernel is ~8x slower for row gathers.
            obs, act, old_logp, a, ret = (x.index_select(0, mb) for x in (b_obs, b_act, b_logp, b_adv, b_ret))
            with torch.autocast(b_obs.device.type, dtype=torch.bfloat16, enabled=amp):
                logits, value = policy(obs)  # (A, b), (b,)
            logp_all = F.log_softmax(logits, dim=0)  # (A, b)
            logp = logp_all.gather(0, act[None]).squeeze(0)  # (b,)
            entropy = -(logp_all.exp() * logp_all).sum(dim=0).mean()
            log_ratio = logp - old_logp
            ratio = log_ratio.exp()
            a = (a - a.mean()) / (a.std() + 1e-8)  # per-minibatch normalisation keeps the step size steady
            policy_loss = torch.max(-a * ratio, -a * ratio.clamp(1.0 - eps, 1.0 + eps)).mean()
            value_loss = 0.5 * (value - ret).pow(2).mean()
            loss = policy_loss + ppo["value_coef"] * value_loss - ent_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, ppo["max_grad_norm"])
            optimizer.step()
            with torch.no_grad():  # summed on the device: one .item() per update, not per minibatch
                kl = ((ratio - 1.0) - log_ratio).mean()  # the low-variance k3 estimator
                frac = ((ratio - 1.0).abs() > eps).float().mean()
                sums += torch.stack(
                    [
                        policy_loss.detach(),
                        value_loss.detach(),
                        entropy.detach(),
                        kl,
                        frac,
                        torch.ones((), device=b_obs.device),
                    ]
                )
    policy_loss, value_loss, entropy, kl, frac = (sums[:5] / sums[5]).tolist()
    return {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": kl,
        "clip_frac": frac,
    }


@torch.no_grad()
def evaluate(
    policy: nn.Module | None, mode: str, cfg: dict, episodes: int, device: str, seed: int, amp: bool = False
) -> dict[str, float]:
    """Runs one episode in each of ``episodes`` mortal, energy-scored worlds and averages them.

    With a policy, actions are its argmax, so the result is a function of the weights and ``seed``
    alone; ``policy=None`` gives the uniform random baseline in the same worlds.
    """
    env = make_env(mode, episodes, cfg, device, seed, for_eval=True)
    gen = torch.Generator(device=env.device).manual_seed(seed + 1)
    obs = env.observe()
    for _ in range(cfg["env"]["max_steps"]):  # every episode ends by then
        if policy is None:
            action = torch.randint(0, len(MOVES), (episodes,), generator=gen, device=env.device)
        else:
            with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=amp):
                action = policy(obs)[0].argmax(dim=0)  # (N,)
        obs, _, _ = env.step(action)
    rows = env.drain_finished()  # (k, 6) in finishing order; a world that died early may have ended twice
    world = rows[:, -1].long()
    first = torch.full((episodes,), len(rows), dtype=torch.long).scatter_reduce(
        0, world, torch.arange(len(rows)), reduce="amin"
    )  # (episodes,) row of each world's first episode
    stats = dict(zip(EPISODE_FIELDS, rows[first, :-1].mean(dim=0).tolist(), strict=True))
    return {
        "return": stats["return"],
        "food_per_episode": stats["food"],
        "poison_per_episode": stats["poison"],
        "steps_per_episode": stats["length"],
        "death_rate": stats["died"],
    }


# ---------------------------------------------------------------------------- training


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # timings must wait for queued kernels
        torch.cuda.synchronize(device)


def measure_env_sps(cfg: dict, mode: str, device: str, steps: int = 128, seed: int = 0) -> float:
    """Environment steps per second with random actions and no network: the ceiling for a rollout."""
    n = cfg["ppo"]["n_envs"]
    env = make_env(mode, n, cfg, device, seed)
    actions = torch.randint(0, len(MOVES), (steps + 1, n), device=env.device)  # (T+1, N)
    env.step(actions[0])  # warm-up
    _sync(env.device)
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        env.step(actions[t])
    _sync(env.device)
    return n * steps / (time.perf_counter() - t0)


class Logs:
    """The per-mode log files: episodes and updates CSVs, and TensorBoard events."""

    UPDATE_FIELDS = (
        "update",
        "env_steps",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_frac",
        "entropy_coef",
        "clip_eps",
        "sps",
        "mean_return",
        "mean_food",
        "mean_poison",
    )

    def __init__(self, out: Path, mode: str):
        from torch.utils.tensorboard import SummaryWriter  # imported here: it takes ~1 s, and tests import this file

        self.stamp = f"{mode}_{time.strftime('%Y%m%d-%H%M%S')}"
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.summary_path = logs / f"{self.stamp}_summary.json"
        self._files = [
            open(logs / f"{self.stamp}_{kind}.csv", "w", newline="", encoding="utf-8")
            for kind in ("episodes", "updates")
        ]
        self.episodes, self.updates = (csv.writer(f) for f in self._files)
        self.episodes.writerow(("mode", "update", *EPISODE_FIELDS))
        self.updates.writerow(self.UPDATE_FIELDS)
        self.tb = SummaryWriter(log_dir=str(out / "runs" / self.stamp))
        self.mode = mode

    def write(self, update: int, episodes: torch.Tensor, row: dict[str, float]) -> None:
        for ep in episodes.tolist():
            self.episodes.writerow((self.mode, update, ep[0], int(ep[1]), int(ep[2]), int(ep[3]), int(ep[4])))
        self.updates.writerow([row.get(k, "") for k in self.UPDATE_FIELDS])
        for f in self._files:
            f.flush()
        for key, value in row.items():
            if key not in ("update", "env_steps"):
                self.tb.add_scalar(f"{self.mode}/{key}", value, row["env_steps"])

    def close(self) -> None:
        for f in self._files:
            f.close()
        self.tb.close()


def train_mode(
    mode: str,
    mode_index: int,
    args: argparse.Namespace,
    cfg: dict,
    device: str,
    metrics: MetricsStream,
    stop: StopFlag,
    resume: dict | None,
) -> dict[str, Any]:
    """Trains one mode from scratch or from ``resume``; returns its summary (``stopped`` tells a signal)."""
    ppo, tr = cfg["ppo"], cfg["training"]
    dev = torch.device(device)
    amp = dev.type == "cuda" and not args.no_amp and torch.cuda.is_bf16_supported()

    # 1. World, model, optimizer; the same seed gives every mode the same weights and layouts.
    seed_everything(args.seed)
    env = make_env(mode, ppo["n_envs"], cfg, device, seed=args.seed)
    model = ActorCritic(env.obs_dim, ppo["hidden_size"], hidden_layers=ppo["hidden_layers"]).to(dev)
    params = list(model.parameters())
    # The fused kernel updates all parameters in one call; per-parameter Adam ops cost ~5% of an update on CPU.
    optimizer = torch.optim.Adam(params, lr=ppo["learning_rate"], eps=1e-5, fused=dev.type in ("cpu", "cuda"))
    total, start, env_steps = tr["updates"], 0, 0
    if resume is not None:
        model.load_state_dict(resume["model_state_dict"])
        optimizer.load_state_dict(resume["optimizer_state_dict"])
        start, env_steps = resume["update"], resume["env_steps"]
        if args.updates is None and args.timesteps is None:
            total = resume["total_updates"]  # continue the run as it was planned
        restore_rng(resume["rng"], device)
        env.gen.set_state(resume["rng"]["env"])
        env.reset_all()  # fresh worlds from the restored stream; the saved ones are not kept
        print(f"[{mode}] resumed from update {start}/{total} ({env_steps:,} env steps)", flush=True)
    policy = (
        model
        if args.compile_mode == "none"
        else torch.compile(model, mode=None if args.compile_mode == "default" else args.compile_mode)
    )
    model_path = args.output_dir / "models" / f"ppo_{mode}.pth"
    logs = None if args.benchmark else Logs(args.output_dir, mode)
    print(
        f"[{mode}] {total} updates x {ppo['n_envs']} envs x {ppo['steps_per_env']} steps on {device}; "
        f"obs {MODES[mode].obs} ({env.obs_dim}), reward {MODES[mode].reward}, "
        f"{'immortal' if MODES[mode].immortal else 'mortal'}; "
        f"{sum(p.numel() for p in params):,} parameters",
        flush=True,
    )

    saved_at = None

    def save(update: int) -> None:
        nonlocal saved_at
        if saved_at == update:
            return  # a stop right after a periodic save: the file already holds this update
        saved_at = update
        model_path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            metrics,
            {
                "mode": mode,
                "update": update,
                "total_updates": total,
                "env_steps": env_steps,
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "model_config": {
                    "obs_dim": env.obs_dim,
                    "hidden_size": ppo["hidden_size"],
                    "n_actions": len(MOVES),
                    "hidden_layers": ppo["hidden_layers"],
                },
                "config": cfg,
                "seed": args.seed,
                "rng": {**rng_state(device), "env": env.gen.get_state()},
            },
            model_path,
            kind="last",
            step=env_steps,
            epoch=update,
            mode=mode,
        )

    # 2. The PPO loop: rollout, advantages, k_epochs of minibatch updates, then report.
    recent = deque(maxlen=ROLLING_EPISODES)  # rows (return, length, food, poison, died)
    timing = {"rollout_s": 0.0, "update_s": 0.0, "steps": 0}  # excludes the first update (warm-up)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    obs = env.observe()
    obs_buf = torch.empty(ppo["steps_per_env"], env.n, env.obs_dim, device=dev)  # (T, N, D), reused
    update = start
    for update in range(start + 1, total + 1):
        progress = (update - 1) / max(total - 1, 1)
        eps, ent = clip_eps(progress, ppo), entropy_coef(progress, ppo)
        t0 = time.perf_counter()
        buf, obs = collect_rollout(policy, env, obs, obs_buf, ppo["gamma"], amp)
        adv, returns = gae(buf, ppo["gamma"], ppo["gae_lambda"])
        _sync(dev)
        t1 = time.perf_counter()
        stats = ppo_update(policy, params, optimizer, buf, adv, returns, ppo, eps, ent, amp)  # .item()s sync
        t2 = time.perf_counter()
        batch = buf.rewards.numel()
        env_steps += batch
        if update > start + 1 or total - start == 1:
            timing["rollout_s"] += t1 - t0
            timing["update_s"] += t2 - t1
            timing["steps"] += batch

        episodes = env.drain_finished()[:, :-1]  # (k, 5) without the world index
        recent.extend(episodes.tolist())
        row = {
            "update": update,
            "env_steps": env_steps,
            **stats,
            "entropy_coef": ent,
            "clip_eps": eps,
            "sps": batch / (t2 - t0),
        }
        if recent:
            means = torch.tensor(list(recent)).mean(dim=0).tolist()
            row.update(mean_return=means[0], mean_length=means[1], mean_food=means[2], mean_poison=means[3])
        taken = torch.bincount(buf.actions.flatten(), minlength=len(MOVES)).float() / buf.actions.numel()  # (A,)
        actions = {f"action_{name}": share for name, share in zip(ACTION_NAMES, taken.tolist(), strict=True)}
        if logs is not None:
            logs.write(update, episodes, row)
        named = {"return": "mean_return", "length": "mean_length", "food": "mean_food", "poison": "mean_poison"}
        metrics.log(
            env_steps,
            mode,
            **{k: row[v] for k, v in named.items() if v in row},
            **actions,  # the share of each action in this rollout: seed 004's action distribution
            **{
                k: row[k]
                for k in ("policy_loss", "value_loss", "entropy", "entropy_coef", "clip_eps", "approx_kl", "sps")
            },
        )
        if update == start + 1 or update == total or update % 10 == 0 or stop.requested:
            print(
                f"[{mode}] update {update}/{total} steps {env_steps:,} return {row.get('mean_return', math.nan):.2f} "
                f"food {row.get('mean_food', math.nan):.1f} poison {row.get('mean_poison', math.nan):.1f} "
                f"entropy {stats['entropy']:.3f} sps {row['sps']:,.0f}",
                flush=True,
            )
        if not args.benchmark and (update % tr["checkpoint_every"] == 0 or update == total):
            save(update)
        if stop.requested:
            break

    # 3. Stopped: keep the weights and leave. Finished: evaluate against the random baseline.
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    summary: dict[str, Any] = {
        "mode": mode,
        "updates": update,
        "total_updates": total,
        "env_steps": env_steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "stopped": stop.requested,
        "device": device,
        "seed": args.seed,
        "amp": amp,
        "compile_mode": args.compile_mode,
        "hyperparams": cfg,
        "mode_spec": {"name": mode, **asdict(MODES[mode])},
    }
    if timing["steps"]:
        summary["throughput"] = {
            "env_steps_per_s": timing["steps"] / (timing["rollout_s"] + timing["update_s"]),
            "rollout_steps_per_s": timing["steps"] / timing["rollout_s"],
            "update_samples_per_s": timing["steps"] / timing["update_s"],
        }
    if stop.requested:
        if not args.benchmark:
            save(update)
            print(f"[{mode}] stopped by signal {stop.signum} at update {update}; wrote {model_path}", flush=True)
    elif args.benchmark:
        t = summary.setdefault("throughput", {})
        t["env_only_steps_per_s"] = measure_env_sps(cfg, mode, device)
        print(
            f"[{mode}] benchmark: {t.get('env_steps_per_s', math.nan):,.0f} env steps/s end to end "
            f"(rollout {t.get('rollout_steps_per_s', math.nan):,.0f} steps/s, update "
            f"{t.get('update_samples_per_s', math.nan):,.0f} samples/s, env only {t['env_only_steps_per_s']:,.0f} "
            f"steps/s); {wall:.1f}s wall, {cpu:.1f}s CPU",
            flush=True,
        )
    else:
        eval_seed = args.seed + 1_000_003  # the same eval worlds for every mode and for the baseline
        model.eval()
        result = evaluate(model, mode, cfg, tr["eval_episodes"], device, eval_seed, amp)
        baseline = evaluate(None, mode, cfg, tr["eval_episodes"], device, eval_seed)
        summary["eval"], summary["random_baseline"] = result, baseline
        ratio = result["food_per_episode"] / max(baseline["food_per_episode"], 1e-9)
        summary["eval"]["food_vs_random"] = ratio
        metrics.log(env_steps, "eval", mode_index=mode_index, **result)
        print(
            f"[{mode}] eval ({tr['eval_episodes']} episodes, argmax, mortal): return {result['return']:.2f}, "
            f"food {result['food_per_episode']:.1f} ({ratio:.1f}x random {baseline['food_per_episode']:.1f}), "
            f"poison {result['poison_per_episode']:.1f}, steps {result['steps_per_episode']:.0f}, "
            f"died {result['death_rate']:.0%}; trained {wall:.0f}s wall, {cpu:.0f}s CPU",
            flush=True,
        )
    if logs is not None:
        summary["logs"] = str(logs.summary_path.parent / logs.stamp)
        atomic_write_json(summary, logs.summary_path)
        logs.close()
    return summary


def train(args: argparse.Namespace, metrics: MetricsStream, stop: StopFlag) -> tuple[int, list[dict[str, Any]]]:
    """Trains every requested mode in turn; returns the exit code and one summary per mode trained."""
    # 1. Resolve the configuration and the device, and announce them.
    cfg, files = load_config(args.config)
    cfg = resolve(args, cfg)
    device = pick_device(cfg["runtime"]["device"])
    if cfg["runtime"]["threads"] > 0:
        torch.set_num_threads(cfg["runtime"]["threads"])
    if device.startswith("cuda"):
        # MIOpen (ROCm) does not cache its algorithm search across processes: benchmark mode
        # would search again at every start. CUDA's cuDNN benefits from it.
        torch.backends.cudnn.benchmark = torch.version.hip is None
    resume = None
    if args.resume is not None:
        resume = load_checkpoint(args.resume, "ppo_gridworld.py", RESUME_KEYS)
        if resume["mode"] not in args.modes:
            raise ValueError(
                f"{args.resume} holds mode {resume['mode']!r}, which is not among --mode "
                f"{','.join(args.modes)}; pass --mode {resume['mode']}"
            )
    metrics.event("start", config={**vars(args), "config": cfg, "config_files": files, "resolved_device": device})
    if args.compile_mode != "none":
        print(f"Compiling with torch.compile(mode={args.compile_mode!r}); the first update is slow", flush=True)

    # 2. One mode after another; a stop request ends the run after saving the current mode.
    summaries = []
    for i, mode in enumerate(args.modes):
        summaries.append(
            train_mode(
                mode,
                i,
                args,
                cfg,
                device,
                metrics,
                stop,
                resume if resume is not None and resume["mode"] == mode else None,
            )
        )
        if stop.requested:
            break
    first = summaries[0].get("eval", {})
    metrics.event(
        "done",
        reason="stopped" if stop.requested else "completed",
        best_eval_return=first.get("return"),
        modes=[s["mode"] for s in summaries],
        updates=[s["updates"] for s in summaries],
        env_steps=sum(s["env_steps"] for s in summaries),
    )
    return (stop.exit_code if stop.requested else 0), summaries


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses flags and runs training under the trainer contract (trainkit.run_trainer)."""
    return run_trainer(lambda a, m, s: train(a, m, s)[0], parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
