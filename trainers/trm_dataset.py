"""Generate the TRM navigation data: states along shortest paths on random grids, with next-move labels.

Usage:
    python trainers/trm_dataset.py --num-train 5000 --num-test 500 --output-dir data/trm
    python trainers/trm_dataset.py --num-train 50000 --num-test 2000 --augment \\
        --output-dir experiments/exp001/data --seed 42          # the training guide's Recipe 2 data

Writes ``train.pt`` and ``test.pt`` into --output-dir (each atomically: a reader sees the old
file or the new one, never half of one), for ``trm_nav.py --train-path ... --val-path ...``.
Each file is a dict:
    tokens  (R, G*G) uint8   cells: 0 empty, 1 wall, 2 agent, 3 goal (the agent hides the goal at the end)
    labels  (R,) int64       next action: 0 up, 1 down, 2 left, 3 right, 4 stay
    policy  (R, G*G) int8    the label every cell would have if the agent stood there (-1 on walls and
                             cells cut off from the goal); trm_nav.py uses it as a dense auxiliary target
    meta    dict             split, grid_size, seed, num_samples (states), views, count (rows = views *
                             num_samples), augment, min_density, max_density, format
With --augment the training file holds all 8 rotations/reflections of every state, view-major
(row v * num_samples + i is view v of state i), so it has 8x the rows ("augmentation effectively
multiplies your data by 8x"); trm_nav.py shows each state once per epoch, in a randomly drawn one
of its 8 copies, so epochs cost the same with and without. The test file is never augmented and
its grids never occur in the training file. The same --seed gives the same files.

trm_nav.py imports this module to generate the same data in-process when it gets no paths.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # lets tests import this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainkit import atomic_torch_save  # noqa: E402

ACTIONS = ("up", "down", "left", "right", "stay")
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col) of actions 0..3, also the tie-break order
EMPTY, WALL, AGENT, GOAL = 0, 1, 2, 3
STAY = 4
FORMAT = 1  # bump when the file layout changes, so an old file is refused with a clear message
GENERATE_HINT = "python trainers/trm_dataset.py --num-train N --num-test M [--augment] --output-dir DIR"


def neighbour_table(n: int) -> list[list[int]]:
    """For each flat cell index, its neighbour per action 0..3, or -1 off the grid."""
    table = []
    for cell in range(n * n):
        r, c = divmod(cell, n)
        table.append([(r + dr) * n + c + dc if 0 <= r + dr < n and 0 <= c + dc < n else -1 for dr, dc in MOVES])
    return table


def cost_to_go(walls: list[bool], goal: int, nbrs: list[list[int]]) -> list[int]:
    """Exact shortest-path distance from every cell to ``goal`` (-1 where unreachable).

    The training guide builds its paths with A*. On a 4-connected grid with unit costs, one
    breadth-first search outward from the goal gives the exact cost-to-go that A* estimates
    with its heuristic, for every cell at once, which is what labelling every state needs.
    """
    dist = [-1] * len(walls)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        u = queue.popleft()
        for v in nbrs[u]:
            if v >= 0 and dist[v] < 0 and not walls[v]:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def best_action(cell: int, dist: list[int], nbrs: list[list[int]]) -> int:
    """The first action, in the fixed order up, down, left, right, that moves one step closer.

    Shortest paths tie often (goal up-left: up-first and left-first are both optimal). Taking
    the first closer move in a fixed order makes the label a function of the grid alone, which
    is what lets a classifier reach high accuracy; a search's own tie-breaking would depend on
    where the path started, which the input does not show.
    """
    if dist[cell] == 0:
        return STAY
    return next(a for a, v in enumerate(nbrs[cell]) if v >= 0 and dist[v] == dist[cell] - 1)


def policy_map(dist: list[int], nbrs: list[list[int]]) -> list[int]:
    """The label of every cell as the agent's position: ``best_action``, or -1 where dist is -1."""
    return [best_action(c, dist, nbrs) if d >= 0 else -1 for c, d in enumerate(dist)]


def dihedral_perms(n: int) -> list[np.ndarray]:
    """Cell permutations of the 8 rotations/reflections: new_grid.flat = old_grid.flat[perm]. The first is identity."""
    base = np.arange(n * n).reshape(n, n)
    return [g.ravel() for r in range(4) for g in (np.rot90(base, r), np.rot90(base, r).T)]


class Samples(NamedTuple):
    """What ``generate_samples`` returns; V is 1, or 8 with every rotation/reflection."""

    tokens: np.ndarray  # (V, N, G*G) uint8
    labels: np.ndarray  # (V, N) int64
    policy: np.ndarray  # (V, N, G*G) int8
    layouts: set[bytes]  # wall layouts (``walls.tobytes()``) of the grids drawn, as drawn


def generate_samples(
    num_samples: int,
    grid_size: int,
    rng: np.random.Generator,
    density: tuple[float, float],
    views: int = 1,
    exclude: set[bytes] | None = None,
) -> Samples:
    """Generates states along shortest paths on random grids, with their next-action labels.

    With ``views=8`` each state is also returned in the 7 other orientations, and every view's
    labels come from a new search on the transformed grid rather than from mapping the action
    (up -> right for a quarter turn, ...). The tie-break order up, down, left, right is not
    symmetric: when "up" and "left" both get closer, a quarter turn makes them "left" and
    "down", and the fixed order then picks "down", not the image of "up". Mapping the action
    would give labels that contradict the rule the rest of the data follows, i.e. label noise;
    recomputing keeps one consistent labelling rule. Where the shortest move is unique, the
    recomputed label is exactly the transformed action.

    Args:
        num_samples: States to return; the last grid's path is cut short to hit it exactly.
        grid_size: Side of the square grid.
        rng: Source of all randomness, so the output is a function of its seed.
        density: (low, high) range from which each grid's wall fraction is drawn.
        views: 1 for the grids as drawn; 8 also returns every rotation/reflection of each state.
        exclude: Wall layouts (``walls.tobytes()``) that must not be used, e.g. the training grids.

    Returns:
        Samples(tokens, labels, policy, layouts), view 0 being the grids as drawn.
    """
    n, cells = grid_size, grid_size * grid_size
    nbrs = neighbour_table(n)
    perms = dihedral_perms(n)[:views]
    tokens = np.empty((views, num_samples, cells), dtype=np.uint8)  # (V, N, G*G); int64 would take 8x the memory
    labels = np.empty((views, num_samples), dtype=np.int64)  # (V, N)
    policy = np.empty((views, num_samples, cells), dtype=np.int8)  # (V, N, G*G)
    layouts: set[bytes] = set()
    filled = attempts = 0
    while filled < num_samples:
        attempts += 1
        if attempts > 100 * num_samples + 1000:  # tiny grids run out of distinct layouts
            raise ValueError(
                f"could not draw {num_samples} samples from distinct {n}x{n} grids with wall density "
                f"{density}; use a larger --grid-size, fewer samples or a lower density"
            )
        walls = rng.random(cells) < rng.uniform(*density)  # (G*G,) bool
        free = np.flatnonzero(~walls)
        key = walls.tobytes()
        if len(free) < 2 or key in layouts or (exclude is not None and key in exclude):
            continue
        goal = int(free[rng.integers(len(free))])
        dist = cost_to_go(walls.tolist(), goal, nbrs)
        reachable = [int(c) for c in free if dist[c] > 0]
        if not reachable:
            continue  # the goal is walled in; draw a new grid rather than bias the start
        layouts.add(key)
        path = [reachable[rng.integers(len(reachable))]]
        while path[-1] != goal:  # walk the labelled policy; it ends at the goal in dist[start] moves
            path.append(nbrs[path[-1]][best_action(path[-1], dist, nbrs)])
        path = np.array(path[: num_samples - filled])  # (L,), the goal state last: label "stay"
        rows = np.arange(filled, filled + len(path))
        for v, perm in enumerate(perms):
            inverse = np.argsort(perm)  # old cell -> new cell
            w, g = walls[perm], int(inverse[goal])
            d = dist if v == 0 else cost_to_go(w.tolist(), g, nbrs)
            grid = w.astype(np.uint8)
            grid[g] = GOAL
            tokens[v, rows] = grid
            tokens[v, rows, inverse[path]] = AGENT  # at the goal the agent hides the goal token
            moves = np.array(policy_map(d, nbrs), dtype=np.int8)  # (G*G,), one search serves the whole path
            policy[v, rows] = moves
            labels[v, rows] = moves[inverse[path]]
        filled += len(path)
    return Samples(tokens, labels, policy, layouts)


def make_datasets(
    num_train: int,
    num_test: int,
    grid_size: int = 8,
    density: tuple[float, float] = (0.2, 0.3),
    augment: bool = False,
    seed: int = 42,
) -> tuple[dict, dict]:
    """The train and test splits, as the dicts that ``train.pt`` and ``test.pt`` hold (module docstring).

    Train and test grids come from separate random streams of ``seed``, and no test grid's wall
    layout occurs among the training grids, so validation measures unseen grids.
    """
    views = 8 if augment else 1
    train = generate_samples(num_train, grid_size, np.random.default_rng([seed, 0]), density, views)
    test = generate_samples(num_test, grid_size, np.random.default_rng([seed, 1]), density, exclude=train.layouts)

    def pack(s: Samples, split: str, v: int, count: int) -> dict:
        return {
            "tokens": torch.from_numpy(s.tokens.reshape(v * count, -1)),  # (V*N, G*G)
            "labels": torch.from_numpy(s.labels.reshape(v * count)),  # (V*N,)
            "policy": torch.from_numpy(s.policy.reshape(v * count, -1)),  # (V*N, G*G)
            "meta": {
                "format": FORMAT,
                "split": split,
                "grid_size": grid_size,
                "seed": seed,
                "num_samples": count,
                "views": v,
                "count": v * count,
                "augment": augment,
                "min_density": density[0],
                "max_density": density[1],
            },
        }

    return pack(train, "train", views, num_train), pack(test, "test", 1, num_test)


def save_split(data: dict, path: str | Path) -> None:
    """Writes one split atomically (temporary file, fsync, rename)."""
    atomic_torch_save(data, path)


def load_split(path: str | Path, what: str = "data") -> dict:
    """Loads a file written by this script and checks its layout.

    Args:
        path: A ``train.pt`` or ``test.pt``.
        what: How error messages name the file, e.g. "--train-path".

    Raises:
        FileNotFoundError: If the file is missing; the message says how to write it.
        ValueError: If the file is not one this script wrote, or its tensors disagree with its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; write it first with: {GENERATE_HINT}")
    data = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and dicts: no pickle code
    if not isinstance(data, dict) or set(data) != {"tokens", "labels", "policy", "meta"}:
        raise ValueError(f"{what} {path} is not a trm_dataset.py file; write one with: {GENERATE_HINT}")
    meta = data["meta"]
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{what} {path} has format {meta.get('format')!r}, this code reads {FORMAT}; regenerate it with: "
            f"{GENERATE_HINT}"
        )
    count, cells = meta["count"], meta["grid_size"] ** 2
    shapes = (tuple(data["tokens"].shape), tuple(data["labels"].shape), tuple(data["policy"].shape))
    if shapes != ((count, cells), (count,), (count, cells)) or count != meta["views"] * meta["num_samples"]:
        raise ValueError(f"{what} {path}: tensor shapes {shapes} disagree with its metadata {meta}")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; --output-dir is the only required flag."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    arg("--num-train", type=int, default=5000, help="training states (before augmentation)")
    arg("--num-test", type=int, default=500, help="test states, from grids that never occur in training")
    arg("--augment", action="store_true", help="also store the 7 other rotations/reflections of each training state")
    arg("--output-dir", type=Path, required=True, help="folder for train.pt and test.pt (created if missing)")
    arg("--seed", type=int, default=42, help="seed of the grids, goals and starts; the same seed gives the same files")
    arg("--grid-size", type=int, default=8, help="side of the square grid")
    arg("--min-density", type=float, default=0.2, help="lowest fraction of wall cells in a grid")
    arg("--max-density", type=float, default=0.3, help="highest fraction of wall cells in a grid")
    args = p.parse_args(argv)
    if args.num_train < 1 or args.num_test < 1:
        p.error("--num-train and --num-test must be at least 1")
    if args.grid_size < 2:
        p.error("--grid-size must be at least 2")
    if not 0.0 <= args.min_density <= args.max_density < 1.0:
        p.error("need 0 <= --min-density <= --max-density < 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: generates both splits and writes them."""
    args = parse_args(argv)
    train, test = make_datasets(
        args.num_train, args.num_test, args.grid_size, (args.min_density, args.max_density), args.augment, args.seed
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for data, name in ((train, "train.pt"), (test, "test.pt")):
        save_split(data, args.output_dir / name)
        meta = data["meta"]
        rows = f"{meta['count']} rows ({meta['num_samples']} states x {meta['views']} views)"
        print(f"Wrote {args.output_dir / name}: {rows}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
