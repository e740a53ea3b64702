"""Train PPO agents in a vectorised food/poison gridworld, with true or proxy rewards (seed 004).

Usage:
    python trainers/ppo_gridworld.py -m ground_truth -u 128       # one mode, 128 PPO updates
    python trainers/ppo_gridworld.py -m ground_truth,proxy -u 300  # two modes, one after the other
    python trainers/ppo_gridworld.py -m all -t 5000000             # the four default modes, 5M steps each
    python trainers/ppo_gridworld.py -m ground_truth -u 20 -b      # throughput only, saves nothing

The world: n_envs independent 32x32 tori, all stepped together as batched tensor ops (no Python
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
from trainkit import (  # noqa: E402
    MetricsStream,
    StopFlag,
    atomic_torch_save,
    atomic_write_json,
    pick_device,
    run_trainer,
    seed_everything,
)

DEFAULTS_FILE = Path(__file__).resolve().with_name("ppo_gridworld.default.toml")
EMPTY, FOOD, POISON = 0, 1, 2
N_CELL_TYPES = 3
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col) of actions up, down, left, right
EPISODE_FIELDS = ("return", "length", "food", "poison", "died")  # columns of a finished-episode row
ROLLING_EPISODES = 100  # train records report means over this many latest episodes
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Mode:
    """What a training mode shows the agent, what it rewards, and whether the agent can die."""

    obs: str  # "onehot": cell types one-hot; "interest": 1 for any item, 0 for empty
    reward: str  # "energy": energy delta; "interest": items eaten; "shaped": energy delta + shaping
    immortal: bool


MODES = {
    "ground_truth": Mode("onehot", "energy", immortal=False),
    "ground_truth_blinded": Mode("interest", "energy", immortal=False),
    "proxy_mortal": Mode("interest", "interest", immortal=False),
    "proxy": Mode("interest", "interest", immortal=True),
    "ground_truth_handhold": Mode("onehot", "shaped", immortal=False),
}
ALL_MODES = ("ground_truth", "ground_truth_blinded", "proxy_mortal", "proxy")  # what `-m all` trains


# ---------------------------------------------------------------------------- configuration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line. Flags left out stay None and fall back to the config files."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    arg("-m", "--mode", default="ground_truth",
        help=f"a mode ({', '.join(MODES)}), `all` (= {', '.join(ALL_MODES)}) or a comma list; "
        "several modes train one after another")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-u", "--updates", type=int, help="PPO updates per mode (default: [training] updates, 128)")
    budget.add_argument("-t", "--timesteps", type=int,
                        help="environment steps per mode, rounded up to whole updates (instead of --updates)")
    arg("-e", "--n-envs", type=int, help="parallel environments (default: [ppo] n_envs, 192)")
    arg("--seed", type=int, default=42, help="seed for worlds, initial weights and action sampling")
    arg("-b", "--benchmark", action="store_true",
        help="measure throughput (env only, rollout, update, end to end); save no model, logs or eval")
    arg("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA (never used on CPU)")
    arg("--compile-mode", choices=COMPILE_MODES, default="none",
        help="torch.compile the network with this mode; none (default) does not compile")
    arg("--device", help="auto, cpu, cuda, cuda:N or mps (default: [runtime] device, auto)")
    arg("--threads", type=int, help="CPU threads for torch; 0 keeps torch's default (default: [runtime] threads, 1)")
    arg("--output-dir", type=Path,
        default=Path(os.environ["TRAINGUARD_RUN_DIR"]) / "checkpoints" if os.environ.get("TRAINGUARD_RUN_DIR")
        else Path("."),
        help="where models/, logs/ and runs/ go (default: $TRAINGUARD_RUN_DIR/checkpoints, else .)")
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


# ---------------------------------------------------------------------------- environment


class GridWorld:
    """``n_envs`` food/poison gridworlds stepped together; every method works on all of them at once.

    State lives in a few tensors: ``grid`` (N, H*W) cell types, ``pos`` (N,) the agent's flat cell,
    ``energy`` (N,), and per-episode counters. The agent is not drawn on the grid; it is always the
    centre of its own view. Finished episodes are appended to ``finished`` as (k, 6) rows
    (return, length, food, poison, died, world index) for the trainer to collect once per rollout.

    Args:
        n_envs: Number of parallel worlds.
        cfg: The merged config (tables env and training are read).
        obs: "onehot" or "interest" (see ``Mode``).
        reward: "energy", "interest" or "shaped".
        immortal: When true, energy may go below 0 and episodes end only by truncation.
        device: Where the tensors live.
        seed: Seeds this world's own generator (layouts, counts, respawns), independent of torch's global one.
    """

    def __init__(self, n_envs: int, cfg: dict, obs: str, reward: str, immortal: bool, device: str = "cpu",
                 seed: int = 0):
        env, tr = cfg["env"], cfg["training"]
        self.n, self.size, self.obs_kind, self.reward_kind = n_envs, env["grid_size"], obs, reward
        self.immortal, self.env_cfg = immortal, env
        self.cells = self.size * self.size
        self.counts = (tr["min_food"], tr["max_food"], tr["min_poison"], tr["max_poison"])
        self.device = dev = torch.device(device)
        self.gen = torch.Generator(device=dev).manual_seed(seed)

        # Lookup tables turn moving and looking into one indexing op each (no modulo per step):
        # the neighbour of every cell per action, and the flat cells of every cell's view.
        r, n = env["view_radius"], self.size
        rows, cols = torch.arange(self.cells, device=dev) // n, torch.arange(self.cells, device=dev) % n  # (H*W,)
        moves = torch.tensor(MOVES, device=dev)  # (4, 2)
        self.neighbour = ((rows[:, None] + moves[:, 0]) % n) * n + (cols[:, None] + moves[:, 1]) % n  # (H*W, 4)
        offsets = torch.arange(-r, r + 1, device=dev)
        dr, dc = (d.reshape(-1) for d in torch.meshgrid(offsets, offsets, indexing="ij"))  # (V,) each
        self.view_cells = ((rows[:, None] + dr) % n) * n + (cols[:, None] + dc) % n  # (H*W, V), V = (2r+1)^2
        self.view_dist = (dr.abs() + dc.abs())[None]  # (1, V) steps from the centre
        # Per cell type (empty, food, poison): energy change of stepping on it, and its interestingness.
        self.energy_of = torch.tensor(
            [-env["step_energy"], env["food_energy"] - env["step_energy"], -env["poison_energy"] - env["step_energy"]],
            device=dev,
        )
        self.interest_of = torch.tensor([0.0, 1.0, 1.0], device=dev)
        self.count_of = torch.eye(N_CELL_TYPES, dtype=torch.long, device=dev)  # adds 1 to the eaten type's counter
        # What the agent sees of each cell type: one-hot rows, or a single "interesting" flag.
        self.obs_of = torch.eye(N_CELL_TYPES, device=dev) if obs == "onehot" else self.interest_of[:, None]  # (3, C)

        z = lambda dtype: torch.zeros(n_envs, dtype=dtype, device=dev)  # noqa: E731
        # int64 throughout: every value indexes a table directly, with no dtype conversions per step.
        self.grid = torch.zeros(n_envs, self.cells, dtype=torch.long, device=dev)  # (N, H*W)
        self.pos, self.steps, self.n_food, self.n_poison = z(torch.long), z(torch.long), z(torch.long), z(torch.long)
        self.energy, self.ep_return = z(torch.float32), z(torch.float32)
        self.ep_eaten = torch.zeros(n_envs, N_CELL_TYPES, dtype=torch.long, device=dev)  # (N, 3) steps per cell type
        self.finished: list[torch.Tensor] = []
        self.reset_all()

    def reset_all(self) -> None:
        """Starts a new episode in every world (also after restoring ``gen`` from a checkpoint)."""
        self.reset_envs(torch.arange(self.n, device=self.device))
        self.view = self._view()  # (N, V) cell types around each agent
        self.phi = self._potential(self.view)  # (N,) shaping potential of the current state

    @property
    def obs_dim(self) -> int:
        """Length of one observation vector."""
        return self.view_cells.shape[1] * self.obs_of.shape[1]

    def reset_envs(self, idx: torch.Tensor) -> None:
        """Starts a new episode in the worlds ``idx`` (k,): fresh item counts, layout and agent."""
        k, dev = len(idx), self.device
        lo_f, hi_f, lo_p, hi_p = self.counts
        n_food = torch.randint(lo_f, hi_f + 1, (k, 1), generator=self.gen, device=dev)  # (k, 1)
        n_items = n_food + torch.randint(lo_p, hi_p + 1, (k, 1), generator=self.gen, device=dev)  # (k, 1)
        # The cells with the m largest of random keys are m distinct uniform cells, drawn for all k
        # worlds in one op: the first n_food get food, the next n_poison poison, and the agent
        # starts on the one after them, which is therefore empty.
        m = hi_f + hi_p + 1
        cells = torch.rand(k, self.cells, generator=self.gen, device=dev).topk(m, dim=1).indices  # (k, m)
        j = torch.arange(m, device=dev)[None]  # (1, m)
        kinds = (j < n_food) * FOOD + ((j >= n_food) & (j < n_items)) * POISON  # (k, m)
        grid = torch.zeros(k, self.cells, dtype=torch.long, device=dev).scatter_(1, cells, kinds)  # (k, H*W)
        # index_copy_/index_fill_ rather than tensor[idx] = ...: the same, in a cheaper kernel.
        self.grid.index_copy_(0, idx, grid)
        self.pos.index_copy_(0, idx, cells.gather(1, n_items).squeeze(1))
        self.n_food.index_copy_(0, idx, n_food.squeeze(1))
        self.n_poison.index_copy_(0, idx, (n_items - n_food).squeeze(1))
        self.energy.index_fill_(0, idx, self.env_cfg["initial_energy"])
        for counter in (self.steps, self.ep_return, self.ep_eaten):
            counter.index_fill_(0, idx, 0)

    def _free_cells(self, worlds: torch.Tensor) -> torch.Tensor:
        """One uniformly random empty cell, not under the agent, in each of ``worlds`` (k,): (k,).

        Rejection sampling: the first free one of 8 uniform candidates is uniform over the free
        cells. In the rare world where all 8 are taken (about 1 in 10^7 at the default densities),
        the exact fallback draws a key per cell and takes the largest among the free ones.
        """
        k, dev, flat = len(worlds), self.device, self.grid.view(-1)
        cand = torch.randint(0, self.cells, (k, 8), generator=self.gen, device=dev)  # (k, 8)
        taken = flat.index_select(0, (worlds[:, None] * self.cells + cand).flatten()).view(k, 8) != EMPTY
        free = ~(taken | (cand == self.pos.index_select(0, worlds)[:, None]))  # (k, 8)
        target = cand.gather(1, free.byte().argmax(dim=1, keepdim=True)).squeeze(1)  # (k,) first free candidate
        if not free.any(dim=1).all():
            keys = torch.rand(k, self.cells, generator=self.gen, device=dev)  # (k, H*W)
            keys.masked_fill_(self.grid.index_select(0, worlds) != EMPTY, -1.0)
            keys.scatter_(1, self.pos.index_select(0, worlds)[:, None], -1.0)
            target = torch.where(free.any(dim=1), target, keys.argmax(dim=1))
        return target

    def _view(self) -> torch.Tensor:
        return self.grid.gather(1, self.view_cells.index_select(0, self.pos))  # (N, V)

    def observe(self) -> torch.Tensor:
        """The agent's observation of the current state: (N, obs_dim) float32."""
        # onehot: empty/food/poison as three 0/1 channels per cell, (N, V*3); interest: one channel,
        # 1 for food and for poison alike, (N, V).
        return self.obs_of.index_select(0, self.view.flatten()).view(self.n, -1)

    def _potential(self, view: torch.Tensor) -> torch.Tensor:
        """Shaping potential: minus the steps to the nearest visible food (the view's width if none)."""
        if self.reward_kind != "shaped":
            return torch.zeros(self.n, device=self.device)
        far = self.view_cells.shape[1] ** 0.5
        nearest = torch.where(view == FOOD, self.view_dist, far).amin(dim=1)  # (N,)
        return -self.env_cfg["shaping_coef"] * nearest.float()

    def step(self, actions: torch.Tensor, gamma: float = 0.99) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Moves every agent by ``actions`` (N,) and auto-resets finished worlds.

        Returns:
            obs (N, obs_dim) of the next state (a new episode's first state where one ended),
            reward (N,) and done (N,) bool: the episode ended on this step (death or truncation).
        """
        # 1. Move on the torus and eat whatever is on the new cell.
        # index_select/take rather than tensor[idx] throughout: the generic indexing kernel costs
        # several times more per call, and a step is made of small calls.
        self.pos = self.neighbour.take(self.pos * len(MOVES) + actions)  # (N,)
        pos = self.pos[:, None]  # (N, 1)
        eaten = self.grid.gather(1, pos).squeeze(1)  # (N,) cell type under the agent
        self.grid.scatter_(1, pos, EMPTY)
        delta = self.energy_of.index_select(0, eaten)  # (N,)
        self.energy += delta

        # 2. Respawn eaten items at a random empty cell that is not under the agent. Only the few
        # worlds that ate anything take part (a nonzero() is free on the CPU; one sync on a GPU).
        if self.env_cfg["respawn"]:
            ate = torch.nonzero(eaten).squeeze(1)  # (k,)
            if len(ate):
                where = ate * self.cells + self._free_cells(ate)  # (k,) flat index into grid
                self.grid.view(-1).index_copy_(0, where, eaten.index_select(0, ate))

        # 3. Reward by mode, then episode bookkeeping. For handhold the logged episode return stays
        # the unshaped energy delta, comparable with ground_truth's; shaping is added below.
        reward = self.interest_of.index_select(0, eaten) if self.reward_kind == "interest" else delta  # (N,)
        self.steps += 1
        self.ep_return += reward
        self.ep_eaten += self.count_of.index_select(0, eaten)
        died = (self.energy <= 0) if not self.immortal else torch.zeros_like(self.energy, dtype=torch.bool)
        done = died | (self.steps >= self.env_cfg["max_steps"])  # (N,)

        # 4. Auto-reset finished worlds, after recording their episode.
        ended = torch.nonzero(done).squeeze(1)  # (k,)
        if len(ended):
            food, poison = self.ep_eaten[:, FOOD], self.ep_eaten[:, POISON]
            fields = [f[ended].float() for f in (self.ep_return, self.steps, food, poison, died)]
            self.finished.append(torch.stack([*fields, ended.float()], dim=1))  # (k, 6)
            self.reset_envs(ended)
        self.view = self._view()
        if self.reward_kind == "shaped":  # potential-based: gamma * phi(s') - phi(s), with phi(terminal) = 0
            phi = self._potential(self.view)
            reward = reward + gamma * phi * ~done - self.phi
            self.phi = phi
        return self.observe(), reward, done

    def drain_finished(self) -> torch.Tensor:
        """The episodes finished since the last call, as rows (k, 6): EPISODE_FIELDS, then the world index."""
        rows = torch.cat(self.finished) if self.finished else torch.zeros(0, len(EPISODE_FIELDS) + 1)
        self.finished = []
        return rows.cpu()


def make_env(mode: str, n_envs: int, cfg: dict, device: str, seed: int, for_eval: bool = False) -> GridWorld:
    """The world a mode trains in; ``for_eval`` gives every mode the same mortal, energy-scored world."""
    m = MODES[mode]
    if for_eval:
        return GridWorld(n_envs, cfg, m.obs, "energy", immortal=False, device=device, seed=seed)
    return GridWorld(n_envs, cfg, m.obs, m.reward, m.immortal, device=device, seed=seed)


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
        return ppo_update(model, params, optimizer, buf, adv, returns, ppo, ppo["eps_clip"],
                          ppo["entropy_initial"], False)

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


def collect_rollout(policy: nn.Module, env: GridWorld, obs: torch.Tensor, obs_buf: torch.Tensor, gamma: float,
                    amp: bool) -> tuple[Rollout, torch.Tensor]:
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


def ppo_update(policy: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, buf: Rollout,
               adv: torch.Tensor, returns: torch.Tensor, ppo: dict, eps: float, ent_coef: float,
               amp: bool) -> dict[str, float]:
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
                sums += torch.stack([policy_loss.detach(), value_loss.detach(), entropy.detach(), kl, frac,
                                     torch.ones((), device=b_obs.device)])
    policy_loss, value_loss, entropy, kl, frac = (sums[:5] / sums[5]).tolist()
    return {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy, "approx_kl": kl,
            "clip_frac": frac}


@torch.no_grad()
def evaluate(policy: nn.Module | None, mode: str, cfg: dict, episodes: int, device: str, seed: int,
             amp: bool = False) -> dict[str, float]:
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

    UPDATE_FIELDS = ("update", "env_steps", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac",
                     "entropy_coef", "clip_eps", "sps", "mean_return", "mean_food", "mean_poison")

    def __init__(self, out: Path, mode: str):
        from torch.utils.tensorboard import SummaryWriter  # imported here: it takes ~1 s, and tests import this file

        self.stamp = f"{mode}_{time.strftime('%Y%m%d-%H%M%S')}"
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.summary_path = logs / f"{self.stamp}_summary.json"
        self._files = [open(logs / f"{self.stamp}_{kind}.csv", "w", newline="", encoding="utf-8")
                       for kind in ("episodes", "updates")]
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


def train_mode(mode: str, mode_index: int, args: argparse.Namespace, cfg: dict, device: str,
               metrics: MetricsStream, stop: StopFlag, resume: dict | None) -> dict[str, Any]:
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
        torch.set_rng_state(resume["rng"]["torch"])
        if dev.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], dev)
        env.gen.set_state(resume["rng"]["env"])
        env.reset_all()  # fresh worlds from the restored stream; the saved ones are not kept
        print(f"[{mode}] resumed from update {start}/{total} ({env_steps:,} env steps)", flush=True)
    policy = model if args.compile_mode == "none" else torch.compile(
        model, mode=None if args.compile_mode == "default" else args.compile_mode
    )
    model_path = args.output_dir / "models" / f"ppo_{mode}.pth"
    logs = None if args.benchmark else Logs(args.output_dir, mode)
    print(f"[{mode}] {total} updates x {ppo['n_envs']} envs x {ppo['steps_per_env']} steps on {device}; "
          f"obs {MODES[mode].obs} ({env.obs_dim}), reward {MODES[mode].reward}, "
          f"{'immortal' if MODES[mode].immortal else 'mortal'}; "
          f"{sum(p.numel() for p in params):,} parameters", flush=True)

    saved_at = None

    def save(update: int) -> None:
        nonlocal saved_at
        if saved_at == update:
            return  # a stop right after a periodic save: the file already holds this update
        saved_at = update
        model_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({
            "mode": mode, "update": update, "total_updates": total, "env_steps": env_steps,
            "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "model_config": {"obs_dim": env.obs_dim, "hidden_size": ppo["hidden_size"], "n_actions": len(MOVES),
                             "hidden_layers": ppo["hidden_layers"]},
            "config": cfg, "seed": args.seed,
            "rng": {"torch": torch.get_rng_state(), "env": env.gen.get_state(),
                    **({"cuda": torch.cuda.get_rng_state(dev)} if dev.type == "cuda" else {})},
        }, model_path)
        metrics.event("checkpoint", path=str(model_path), step=env_steps, epoch=update, kind="last", mode=mode)

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
        row = {"update": update, "env_steps": env_steps, **stats, "entropy_coef": ent, "clip_eps": eps,
               "sps": batch / (t2 - t0)}
        if recent:
            means = torch.tensor(list(recent)).mean(dim=0).tolist()
            row.update(mean_return=means[0], mean_food=means[2], mean_poison=means[3])
        if logs is not None:
            logs.write(update, episodes, row)
        named = {"return": "mean_return", "food": "mean_food", "poison": "mean_poison"}
        metrics.log(env_steps, mode, **{k: row[v] for k, v in named.items() if v in row},
                    **{k: row[k] for k in ("policy_loss", "value_loss", "entropy", "entropy_coef", "clip_eps",
                                            "approx_kl", "sps")})
        if update == start + 1 or update == total or update % 10 == 0 or stop.requested:
            print(f"[{mode}] update {update}/{total} steps {env_steps:,} return {row.get('mean_return', math.nan):.2f} "
                  f"food {row.get('mean_food', math.nan):.1f} poison {row.get('mean_poison', math.nan):.1f} "
                  f"entropy {stats['entropy']:.3f} sps {row['sps']:,.0f}", flush=True)
        if not args.benchmark and (update % tr["checkpoint_every"] == 0 or update == total):
            save(update)
        if stop.requested:
            break

    # 3. Stopped: keep the weights and leave. Finished: evaluate against the random baseline.
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    summary: dict[str, Any] = {
        "mode": mode, "updates": update, "total_updates": total, "env_steps": env_steps, "wall_s": wall,
        "cpu_s": cpu, "stopped": stop.requested, "device": device, "seed": args.seed, "amp": amp,
        "compile_mode": args.compile_mode, "hyperparams": cfg, "mode_spec": {"name": mode, **asdict(MODES[mode])},
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
        print(f"[{mode}] benchmark: {t.get('env_steps_per_s', math.nan):,.0f} env steps/s end to end "
              f"(rollout {t.get('rollout_steps_per_s', math.nan):,.0f} steps/s, update "
              f"{t.get('update_samples_per_s', math.nan):,.0f} samples/s, env only {t['env_only_steps_per_s']:,.0f} "
              f"steps/s); {wall:.1f}s wall, {cpu:.1f}s CPU", flush=True)
    else:
        eval_seed = args.seed + 1_000_003  # the same eval worlds for every mode and for the baseline
        model.eval()
        result = evaluate(model, mode, cfg, tr["eval_episodes"], device, eval_seed, amp)
        baseline = evaluate(None, mode, cfg, tr["eval_episodes"], device, eval_seed)
        summary["eval"], summary["random_baseline"] = result, baseline
        ratio = result["food_per_episode"] / max(baseline["food_per_episode"], 1e-9)
        summary["eval"]["food_vs_random"] = ratio
        metrics.log(env_steps, "eval", mode_index=mode_index, **result)
        print(f"[{mode}] eval ({tr['eval_episodes']} episodes, argmax, mortal): return {result['return']:.2f}, "
              f"food {result['food_per_episode']:.1f} ({ratio:.1f}x random {baseline['food_per_episode']:.1f}), "
              f"poison {result['poison_per_episode']:.1f}, steps {result['steps_per_episode']:.0f}, "
              f"died {result['death_rate']:.0%}; trained {wall:.0f}s wall, {cpu:.0f}s CPU", flush=True)
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
        resume = torch.load(args.resume, map_location="cpu", weights_only=True)
        if resume["mode"] not in args.modes:
            raise ValueError(f"{args.resume} holds mode {resume['mode']!r}, which is not among --mode "
                             f"{','.join(args.modes)}; pass --mode {resume['mode']}")
    metrics.event("start", config={**vars(args), "config": cfg, "config_files": files, "resolved_device": device})
    if args.compile_mode != "none":
        print(f"Compiling with torch.compile(mode={args.compile_mode!r}); the first update is slow", flush=True)

    # 2. One mode after another; a stop request ends the run after saving the current mode.
    summaries = []
    for i, mode in enumerate(args.modes):
        summaries.append(train_mode(mode, i, args, cfg, device, metrics, stop,
                                    resume if resume is not None and resume["mode"] == mode else None))
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
