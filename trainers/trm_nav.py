"""Train the TRM navigation policy: an MLP-Mixer that reads a grid and picks the next move.

Usage:
    python trainers/trm_nav.py                      # defaults: 5,000 train / 500 test samples, dim 64
    python trainers/trm_nav.py --num-train 5000 --num-test 500 --dim 64 --depth 2 \\
        --dropout 0.1 --epochs 30 --patience 10     # the training guide's Recipe 1

The task: an agent and a goal sit on a grid with random walls. Each sample is one state along
a shortest path (cells as tokens: 0 empty, 1 wall, 2 agent, 3 goal) and its label is the next
action (0 up, 1 down, 2 left, 3 right, 4 stay). The data is generated here, deterministically
from --seed, so the script needs no files.

Outputs, in --checkpoint-dir (default $TRAINGUARD_RUN_DIR/checkpoints, else ./checkpoints):
    best.pt       the checkpoint with the best validation accuracy so far
    last.pt       the latest checkpoint, written every epoch and on SIGTERM/SIGINT
    history.json  per-epoch lists train_loss, train_acc, val_loss, val_acc, lr

Under trainguard, $TRAINGUARD_METRICS names a JSON-lines file that receives a start event,
one train and one val record per epoch, checkpoint events and a done event (see trainkit.py).
SIGTERM or SIGINT stops after the current batch: last.pt is written, then the process exits
with 143 or 130 so a supervisor can tell a stop from a completed run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
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
    seed_everything,
)

ACTIONS = ("up", "down", "left", "right", "stay")
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col) of actions 0..3, also the tie-break order
EMPTY, WALL, AGENT, GOAL = 0, 1, 2, 3
STAY = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; every flag has a default, so no flag is required."""
    default_dir = (
        Path(os.environ["TRAINGUARD_RUN_DIR"]) / "checkpoints"
        if os.environ.get("TRAINGUARD_RUN_DIR")
        else Path("checkpoints")
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    # data
    arg("--num-train", type=int, default=5000, help="training samples (states, not grids)")
    arg("--num-test", type=int, default=500, help="validation samples, drawn from grids unseen in training")
    arg("--grid-size", type=int, default=8, help="side of the square grid")
    arg("--min-density", type=float, default=0.2, help="lowest fraction of wall cells in a grid")
    arg("--max-density", type=float, default=0.3, help="highest fraction of wall cells in a grid")
    arg(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="show each training state in a random one of the 8 rotations/reflections each epoch "
        "(labels are recomputed for the new orientation)",
    )
    # model
    arg("--dim", type=int, default=64, help="width of the token embeddings")
    arg("--depth", type=int, default=2, help="number of mixer blocks")
    arg("--dropout", type=float, default=0.1, help="dropout probability inside the mixer blocks")
    # optimisation
    arg("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    arg(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="cosine: linear warm-up over the first epoch, then cosine decay to 10%% of --lr by --epochs",
    )
    arg("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    arg("--batch-size", type=int, default=64, help="samples per optimizer step")
    arg("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0 disables)")
    arg("--epochs", type=int, default=100, help="maximum number of passes over the training set")
    arg(
        "--patience",
        type=int,
        default=15,
        help="stop after this many epochs without a new best validation accuracy (0 disables)",
    )
    # run
    arg("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; auto prefers cuda, then mps")
    arg("--seed", type=int, default=42, help="seed for the data, the initial weights and the batch order")
    arg("--checkpoint-dir", type=Path, default=default_dir, help="where best.pt, last.pt, history.json go")
    args = p.parse_args(argv)
    for name in ("num_train", "num_test", "dim", "depth", "batch_size", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.grid_size < 2:
        p.error("--grid-size must be at least 2")
    if not 0.0 <= args.min_density <= args.max_density < 1.0:
        p.error("need 0 <= --min-density <= --max-density < 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    return args


# ---------------------------------------------------------------------------- data


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


def dihedral_perms(n: int) -> list[np.ndarray]:
    """Cell permutations of the 8 rotations/reflections: new_grid.flat = old_grid.flat[perm]."""
    base = np.arange(n * n).reshape(n, n)
    return [g.ravel() for r in range(4) for g in (np.rot90(base, r), np.rot90(base, r).T)]


def generate_samples(
    num_samples: int,
    grid_size: int,
    rng: np.random.Generator,
    density: tuple[float, float],
    views: int = 1,
    exclude: set[bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray, set[bytes]]:
    """Generates states along shortest paths on random grids, with their next-action labels.

    Args:
        num_samples: States to return; the last grid's path is cut short to hit it exactly.
        grid_size: Side of the square grid.
        rng: Source of all randomness, so the output is a function of its seed.
        density: (low, high) range from which each grid's wall fraction is drawn.
        views: 1 for the grids as drawn; 8 also returns every rotation/reflection of each state.
        exclude: Wall layouts (``walls.tobytes()``) that must not be used, e.g. the training grids.

    Returns:
        tokens (views, N, grid_size**2) int64, labels (views, N) int64, and the wall layouts used.
    """
    n, cells = grid_size, grid_size * grid_size
    nbrs = neighbour_table(n)
    perms = dihedral_perms(n)[:views]
    tokens = np.empty((views, num_samples, cells), dtype=np.int64)  # (V, N, G*G)
    labels = np.empty((views, num_samples), dtype=np.int64)  # (V, N)
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
            grid = w.astype(np.int64)
            grid[g] = GOAL
            tokens[v, rows] = grid
            tokens[v, rows, inverse[path]] = AGENT  # at the goal the agent hides the goal token
            labels[v, rows] = [best_action(int(c), d, nbrs) for c in inverse[path]]
        filled += len(path)
    return tokens, labels, layouts


def make_datasets(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train views (V, N, G*G) and labels (V, N); test tokens (M, G*G) and labels (M,), from disjoint grids."""
    density = (args.min_density, args.max_density)
    views = 8 if args.augment else 1
    x_train, y_train, seen = generate_samples(
        args.num_train, args.grid_size, np.random.default_rng([args.seed, 0]), density, views
    )
    x_test, y_test, _ = generate_samples(
        args.num_test, args.grid_size, np.random.default_rng([args.seed, 1]), density, exclude=seen
    )
    return x_train, y_train, x_test[0], y_test[0]


# ---------------------------------------------------------------------------- model


class MixerBlock(nn.Module):
    """Mixes information across cells (token MLP), then within each cell (channel MLP)."""

    def __init__(self, num_tokens: int, dim: int, dropout: float):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(  # acts along the cell axis: how cells inform each other
            nn.Linear(num_tokens, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_tokens), nn.Dropout(dropout)
        )
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        mixed = self.token_mlp(self.token_norm(x).transpose(1, 2))  # (B, C, T)
        x = x + mixed.transpose(1, 2)  # (B, T, C)
        return x + self.channel_mlp(self.channel_norm(x))  # (B, T, C)


class NavMixer(nn.Module):
    """MLP-Mixer policy: cell tokens (B, G*G) -> action logits (B, 5)."""

    def __init__(self, grid_size: int, dim: int, depth: int, dropout: float):
        super().__init__()
        num_tokens = grid_size * grid_size
        self.token_emb = nn.Embedding(4, dim)  # empty, wall, agent, goal
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)  # learned, one per cell
        self.blocks = nn.ModuleList(MixerBlock(num_tokens, dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(ACTIONS))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens: (B, T) int64
        x = self.token_emb(tokens) + self.pos_emb  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.norm(x).mean(dim=1))  # (B, 5)


def create_model(grid_size: int = 8, dim: int = 64, depth: int = 2, dropout: float = 0.1) -> NavMixer:
    """Builds the policy from the four numbers a checkpoint's ``config`` stores."""
    return NavMixer(grid_size, dim, depth, dropout)


def build_model_and_batch(
    config: dict, batch_size: int, device: str = "cpu"
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """One training batch's worth of model and data, without generating the dataset.

    Pre-flight checks use this to measure the memory of a forward/backward pass.

    Args:
        config: grid_size, dim, depth, dropout (missing keys take the command-line defaults).
        batch_size: Rows in the batch.
        device: Where to put the model and tensors.

    Returns:
        The model in train mode, tokens (B, G*G) int64 and targets (B,) int64.
    """
    defaults = vars(parse_args([]))
    cfg = {k: config.get(k, defaults[k]) for k in ("grid_size", "dim", "depth", "dropout")}
    model = create_model(**cfg).to(device).train()
    gen = torch.Generator().manual_seed(0)  # random but reproducible, and leaves the global RNG alone
    inputs = torch.randint(0, 4, (batch_size, cfg["grid_size"] ** 2), generator=gen).to(device)  # (B, T)
    targets = torch.randint(0, len(ACTIONS), (batch_size,), generator=gen).to(device)  # (B,)
    return model, inputs, targets


# ---------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode (no dropout)."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])  # (b, 5)
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(-1) == y[i : i + batch_size]).sum()
    model.train()
    return loss_sum.item() / len(y), correct.item() / len(y)


def train(args: argparse.Namespace, metrics: MetricsStream, stop: StopFlag) -> int:
    """Runs the whole training; returns the process exit code (0, or 128+signal when stopped)."""
    # 1. Resolve everything the run depends on, and announce it before the slow parts.
    device = pick_device(args.device)
    seed_everything(args.seed)
    ckpt_dir = Path(args.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model_config = {"grid_size": args.grid_size, "dim": args.dim, "depth": args.depth, "dropout": args.dropout}
    metrics.event("start", config={**vars(args), "checkpoint_dir": str(ckpt_dir), "resolved_device": device})

    # 2. Data: small enough to live on the device whole, so batches are just index lookups.
    t0 = time.time()
    x_views, y_views, x_test, y_test = make_datasets(args)
    # Stored as uint8 (8x smaller than int64: 8 views of 100K states would otherwise take 400 MB);
    # each batch is widened to int64 for the embedding lookup.
    x_views = torch.from_numpy(x_views.astype(np.uint8)).to(device)  # (V, N, T)
    y_views = torch.from_numpy(y_views).to(device)  # (V, N)
    x_test, y_test = torch.from_numpy(x_test).to(device), torch.from_numpy(y_test).to(device)  # (M, T), (M,)
    num_views, n_train = y_views.shape
    counts = torch.bincount(y_views[0], minlength=len(ACTIONS)).tolist()
    print(
        f"Data: {n_train} train / {len(y_test)} test samples in {time.time() - t0:.1f}s, "
        f"label counts {dict(zip(ACTIONS, counts, strict=True))}, device {device}",
        flush=True,
    )

    # 3. Model and optimizer.
    model = create_model(**model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps, warmup = args.epochs * steps_per_epoch, steps_per_epoch

    def lr_at(step: int) -> float:
        if args.lr_schedule == "constant":
            return args.lr
        if step < warmup:  # a short warm-up keeps the first, largest Adam updates from wrecking the init
            return args.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    print(f"Model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)

    # 4. Train, evaluate after every epoch, keep the best, stop early when it stops improving.
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
    best_acc, best_epoch, epochs_done, step = -1.0, 0, 0, 0
    val_loss = val_acc = None
    reason = "completed"

    def save(kind: str, epoch: int) -> None:
        path = ckpt_dir / f"{kind}.pt"
        atomic_torch_save(
            {
                "epoch": epoch,
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "val_acc": val_acc,
                "val_loss": val_loss,
                "config": model_config,
            },
            path,
        )
        metrics.event("checkpoint", path=str(path), step=step, epoch=epoch, kind=kind)

    for epoch in range(1, args.epochs + 1):
        # 4a. One pass; with --augment every state is shown in a freshly drawn orientation.
        t_epoch = time.time()
        rows = torch.arange(n_train, device=device)
        view = torch.randint(0, num_views, (n_train,), device=device)
        x_train, y_train = x_views[view, rows], y_views[view, rows]  # (N, T), (N,)
        order = torch.randperm(n_train, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for i in range(0, n_train, args.batch_size):
            if stop.requested:
                break
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i : i + args.batch_size]
            xb, yb = x_train[idx].long(), y_train[idx]  # (B, T), (B,)
            logits = model(xb)  # (B, 5)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            # Accumulate on the device: .item() here would be a CPU-GPU sync point every batch.
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(-1) == yb).sum()
            seen += len(idx)
        if stop.requested:
            break
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
        samples_per_s = seen / (time.time() - t_epoch)  # .item() above already waited for the device

        # 4b. Validate, report, checkpoint.
        val_loss, val_acc = evaluate(model, x_test, y_test)
        epochs_done = epoch
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch
        for key, value in zip(history, (train_loss, train_acc, val_loss, val_acc, lr), strict=True):
            history[key].append(value)
        print(
            f"Epoch {epoch}/{args.epochs} - Train Loss: {train_loss:.4f}, Train Acc: {train_acc:.4f} "
            f"Val Loss: {val_loss:.4f}, Val Acc: {val_acc:.4f}" + (" *" if improved else ""),
            flush=True,
        )
        metrics.log(step, "train", epoch=epoch, loss=train_loss, acc=train_acc, lr=lr, sps=samples_per_s)
        metrics.log(step, "val", epoch=epoch, loss=val_loss, acc=val_acc)
        if improved:
            save("best", epoch)
        save("last", epoch)
        atomic_write_json(history, ckpt_dir / "history.json")
        if args.patience and epoch - best_epoch >= args.patience:
            reason = "early_stopping"
            print(f"Early stopping: no better val acc for {args.patience} epochs", flush=True)
            break

    # 5. A stop request lands here mid-epoch: keep the weights, then say why we are exiting.
    if stop.requested:
        reason = "stopped"
        save("last", epochs_done)  # "epoch" stays the last completed one, so a resume starts at +1
        print(f"Stopped by signal {stop.signum}; wrote {ckpt_dir / 'last.pt'}", flush=True)
    metrics.event(
        "done",
        reason=reason,
        best_val_acc=best_acc if best_epoch else None,
        best_epoch=best_epoch or None,
        epochs=epochs_done,
        steps=step,
    )
    if best_epoch:
        print(f"Best val acc {best_acc:.4f} at epoch {best_epoch}", flush=True)
    return stop.exit_code if stop.requested else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses flags, runs training, records a crash as an ``error`` event."""
    args = parse_args(argv)
    stop = StopFlag()
    metrics = MetricsStream()
    try:
        return train(args, metrics, stop)
    except Exception as exc:
        metrics.event("error", message=str(exc), type=type(exc).__name__)
        raise
    finally:
        metrics.close()
        stop.restore()


if __name__ == "__main__":
    sys.exit(main())
