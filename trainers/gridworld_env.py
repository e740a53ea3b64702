"""The food/poison gridworld of seed 004, vectorised: n_envs tori stepped together as batched tensor ops.

Each world holds one agent and a number of food and poison items, drawn per episode from
[min_food, max_food] and [min_poison, max_poison]. Moving onto an item eats it: food gives
energy, poison costs energy, every step costs a little, and a mortal agent dies when its energy
reaches 0. An eaten item respawns at a random empty cell, so the counts stay constant within an
episode. The agent sees the (2r+1)^2 cells around itself and moves up, down, left or right.

A training ``Mode`` sets what the agent sees (cell types one-hot, or one "interesting" flag for
food and poison alike), what it is rewarded for, and whether it can die; ``make_env`` builds the
world of a mode. ppo_gridworld.py trains PPO agents in these worlds; this module holds the world
alone, as trm_dataset.py holds the TRM data, so it reads (and is tested) without the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY, FOOD, POISON = 0, 1, 2
N_CELL_TYPES = 3
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col) of actions up, down, left, right
EPISODE_FIELDS = ("return", "length", "food", "poison", "died")  # columns of a finished-episode row


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

    def __init__(
        self, n_envs: int, cfg: dict, obs: str, reward: str, immortal: bool, device: str = "cpu", seed: int = 0
    ):
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
