"""Train the TRM navigation policy: an MLP-Mixer that reads a grid and picks the next move.

Usage:
    python trainers/trm_nav.py                      # defaults: 5,000 train / 500 test samples, dim 64
    python trainers/trm_nav.py --num-train 5000 --num-test 500 --dim 64 --depth 2 \\
        --dropout 0.1 --epochs 30 --patience 10     # the training guide's Recipe 1
    python trainers/trm_dataset.py --num-train 50000 --num-test 2000 --augment --output-dir data
    python trainers/trm_nav.py --train-path data/train.pt --val-path data/test.pt \\
        --checkpoint-dir ckpt --dim 128 --depth 3   # the guide's "Recommended Workflow"
    python trainers/trm_nav.py --resume ckpt/last.pt --checkpoint-dir ckpt --dim 128 --depth 3 \\
        --train-path data/train.pt --val-path data/test.pt   # continue at the epoch after last.pt's

The task: an agent and a goal sit on a grid with random walls. Each sample is one state along
a shortest path (cells as tokens: 0 empty, 1 wall, 2 agent, 3 goal) and its label is the next
action (0 up, 1 down, 2 left, 3 right, 4 stay). Without --train-path/--val-path the data is
generated here by trm_dataset.py's code, deterministically from --seed, so no files are needed.

Outputs, in --checkpoint-dir (default $TRAINGUARD_RUN_DIR/checkpoints, else ./checkpoints):
    best.pt       the checkpoint with the best validation accuracy so far
    last.pt       the latest checkpoint, written every epoch and on SIGTERM/SIGINT
    history.json  per-epoch lists train_loss, train_acc, val_loss, val_acc, lr
Both checkpoints hold everything --resume needs: weights, optimizer, step (the lr schedule's
position), epoch, best-so-far, history and the RNG state, so a resumed run continues exactly.

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
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

if str(Path(__file__).resolve().parent) not in sys.path:  # lets tests import this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainkit import (  # noqa: E402
    Distributed,
    MetricsStream,
    StopFlag,
    atomic_write_json,
    check_same_model,
    finish,
    load_checkpoint,
    pick_device,
    restore_rng,
    rng_state,
    run_trainer,
    save_checkpoint,
    seed_everything,
)
from trm_dataset import (  # noqa: E402, F401  (re-exported: the labels' vocabulary belongs with the policy)
    ACTIONS,
    AGENT,
    EMPTY,
    GOAL,
    MOVES,
    STAY,
    WALL,
    generate_samples,
    load_split,
    make_datasets,
)

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
RESUME_KEYS = {"epoch", "step", "model_state_dict", "optimizer_state_dict", "config", "best_val_acc", "history"}
RESUME_KEYS |= {"best_epoch", "rng"}


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
    arg("--train-path", type=Path, help="train.pt written by trm_dataset.py; then the data flags below are unused")
    arg("--val-path", type=Path, help="test.pt written by trm_dataset.py with the same command as --train-path")
    arg("--num-train", type=int, default=5000, help="training samples (states, not grids) to generate")
    arg("--num-test", type=int, default=500, help="validation samples, drawn from grids unseen in training")
    arg("--grid-size", type=int, default=8, help="side of the square grid")
    arg("--min-density", type=float, default=0.2, help="lowest fraction of wall cells in a grid")
    arg("--max-density", type=float, default=0.3, help="highest fraction of wall cells in a grid")
    arg(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="use all 8 rotations/reflections of each training state (labels recomputed per orientation): each "
        "epoch shows every state once, in a freshly drawn orientation, so an epoch costs the same as without. "
        "With --train-path the file decides: one written with --augment is always used this way",
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
    arg(
        "--batch-size",
        type=int,
        default=64,
        help="samples per optimizer step: the global batch, split over torchrun's ranks",
    )
    arg("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (0 disables)")
    arg(
        "--aux-weight",
        type=float,
        default=0.5,
        help="weight of the auxiliary loss: the move from every free cell, as if the agent stood there (0 disables)",
    )
    arg("--epochs", type=int, default=100, help="last epoch to train (early stopping may end sooner)")
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
    arg("--resume", type=Path, help="a last.pt/best.pt of this trainer: continue from its epoch + 1, same flags")
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
    if args.aux_weight < 0:
        p.error("--aux-weight must be at least 0")
    if (args.train_path is None) != (args.val_path is None):
        p.error("pass --train-path and --val-path together (trm_dataset.py writes both), or neither to generate here")
    return args


# ---------------------------------------------------------------------------- data


def load_data(args: argparse.Namespace) -> tuple[dict, dict]:
    """The train and validation splits (trm_dataset.py's dicts): read from the paths, or generated here."""
    if args.train_path is None:
        return make_datasets(
            args.num_train, args.num_test, args.grid_size, (args.min_density, args.max_density), args.augment, args.seed
        )
    train, val = load_split(args.train_path, "--train-path"), load_split(args.val_path, "--val-path")
    tm, vm = train["meta"], val["meta"]
    if tm["grid_size"] != vm["grid_size"]:
        raise ValueError(f"--train-path has {tm['grid_size']}x{tm['grid_size']} grids, --val-path {vm['grid_size']}")
    if vm["views"] != 1:
        raise ValueError(f"--val-path {args.val_path} holds augmented copies; pass the test.pt written beside it")
    if args.augment and tm["views"] == 1:
        raise ValueError(
            f"--augment asked for, but {args.train_path} was written without it; regenerate with "
            "python trainers/trm_dataset.py --augment ..., or drop --augment"
        )
    # Validation must measure unseen grids: a val file from another command could share them.
    train_walls = {bytes(row) for row in (train["tokens"] == WALL).numpy()}
    shared = sum(bytes(row) in train_walls for row in (val["tokens"] == WALL).numpy())
    if shared:
        raise ValueError(
            f"{shared} of {vm['count']} validation states use grids that occur in {args.train_path}; pass the "
            "test.pt written by the same trm_dataset.py command"
        )
    return train, val


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


def agent_index(tokens: torch.Tensor) -> torch.Tensor:
    """Flat cell index of the agent in each grid (B, G*G) -> (B,); the first cell if there is none."""
    return (tokens == AGENT).int().argmax(dim=1)


class NavMixer(nn.Module):
    """MLP-Mixer policy: cell tokens (B, G*G) -> action logits (B, 5), read at the agent's cell.

    Each cell enters the mixer as the sum of five vectors. Two are a plain Mixer's: what the cell
    holds and where it is. A plain Mixer tops out near 79% on Recipe 1 and overfits: its token MLP
    must learn "the cell above the agent is a wall" separately for each of the 64 agent positions
    from ~750 training grids. So three more carry what the labelling rule depends on, with weights
    shared by every position:
      - the cell's offset from the agent and its offset from the goal (one learned vector per
        (d_row, d_col)): "above the agent" is one vector wherever the agent is, and the offset to
        the goal gives every cell its Manhattan direction;
      - a small conv stem over the one-hot grid (4 layers of 3x3, receptive field 9x9): local wall
        shapes (corridors, dead ends, corners) found the same way at every position.
    The mixer blocks then relate cells globally. The head gives logits at every cell, i.e. the
    move the agent would make there, which the auxiliary loss supervises; the prediction is the
    agent's cell's.
    """

    def __init__(self, grid_size: int, dim: int, depth: int, dropout: float):
        super().__init__()
        n, num_tokens, width = grid_size, grid_size * grid_size, max(16, dim // 2)
        self.grid_size = n
        self.token_emb = nn.Embedding(4, dim)  # empty, wall, agent, goal
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)  # learned, one per cell
        self.from_agent = nn.Embedding((2 * n - 1) ** 2, dim)  # one vector per (d_row, d_col) offset
        self.from_goal = nn.Embedding((2 * n - 1) ** 2, dim)
        self.stem = nn.Sequential(  # zero padding: off-grid reads as "no token at all", unlike an empty cell
            nn.Conv2d(4, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, dim, 3, padding=1),
        )  # fmt: skip
        self.blocks = nn.ModuleList(MixerBlock(num_tokens, dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(ACTIONS))
        cell = torch.arange(num_tokens)
        self.register_buffer("rows", cell // n, persistent=False)  # (T,), derived: kept out of checkpoints
        self.register_buffer("cols", cell % n, persistent=False)  # (T,)

    def _offsets(self, at: torch.Tensor) -> torch.Tensor:  # at: (B,) flat cell -> (B, T) offset ids
        n = self.grid_size
        d_row = self.rows - (at // n)[:, None] + n - 1  # (B, T), in [0, 2n-2]
        d_col = self.cols - (at % n)[:, None] + n - 1  # (B, T)
        return d_row * (2 * n - 1) + d_col  # (B, T)

    def cell_logits(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens: (B, T) int
        """Action logits as if the agent stood on each cell: (B, T, 5)."""
        tokens = tokens.long()
        b, n = tokens.shape[0], self.grid_size
        agent = agent_index(tokens)  # (B,)
        goal_cell = tokens == GOAL  # (B, T)
        goal = torch.where(goal_cell.any(dim=1), goal_cell.int().argmax(dim=1), agent)  # at the goal: under the agent
        one_hot = F.one_hot(tokens, 4).transpose(1, 2).reshape(b, 4, n, n).float()  # (B, 4, G, G)
        x = (
            self.token_emb(tokens)  # (B, T, C)
            + self.pos_emb  # (T, C)
            + self.from_agent(self._offsets(agent))  # (B, T, C)
            + self.from_goal(self._offsets(goal))  # (B, T, C)
            + self.stem(one_hot).flatten(2).transpose(1, 2)  # (B, C, G, G) -> (B, T, C)
        )
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.head(self.norm(x))  # (B, T, 5)

    def forward(self, tokens: torch.Tensor, cells: bool = False) -> torch.Tensor:  # tokens: (B, T) int
        """The logits at the agent (B, 5), or with `cells` every cell's (B, T, 5): training goes
        through forward either way, as DistributedDataParallel needs."""
        cell_logits = self.cell_logits(tokens)
        return cell_logits if cells else at_agent(cell_logits, tokens)


def at_agent(cell_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Picks each grid's agent cell out of (B, T, 5) logits: (B, 5)."""
    return cell_logits[torch.arange(len(tokens), device=tokens.device), agent_index(tokens)]


def create_model(grid_size: int = 8, dim: int = 64, depth: int = 2, dropout: float = 0.1) -> NavMixer:
    """Builds the policy from the four numbers a checkpoint's ``config`` stores."""
    return NavMixer(grid_size, dim, depth, dropout)


# ---------------------------------------------------------------------------- training


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    pb: torch.Tensor,
    args: argparse.Namespace,
    use_autocast: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One optimizer step on tokens xb (B, T), labels yb (B,) and per-cell policy pb (B, T).

    Returns:
        The action loss and the auxiliary loss (None without --aux-weight), both detached 0-d,
        and the logits at the agent (B, 5), detached.
    """
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
        cells = model(xb, cells=True).float()  # (B, T, 5)
    logits = at_agent(cells, xb)  # (B, 5)
    loss = total = F.cross_entropy(logits, yb)
    aux = None
    if args.aux_weight:
        # Every free cell's move is known, so each grid teaches 50-odd labels instead of one;
        # walls and cells cut off from the goal are -1 and ignored.
        aux = F.cross_entropy(cells.flatten(0, 1), pb.flatten(), ignore_index=-1)
        total = loss + args.aux_weight * aux
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if args.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    return loss.detach(), None if aux is None else aux.detach(), logits.detach()


def memory_step(argv: list[str], batch_size: int, device: str = "cpu"):
    """One training step as the loop runs it, for pre-flight's memory estimate (trainers/memprobe.py).

    Builds what training keeps on the device: the data (8 views with --augment) as the loop
    holds it, one epoch's gathered copy, the model, AdamW and one batch. With --train-path the
    sizes come from the flags' counts, not the file.

    Returns:
        A closure running one optimizer step.
    """
    args = parse_args(argv)
    args.batch_size = batch_size
    views, cells = (8 if args.augment else 1), args.grid_size**2
    n, m = args.num_train, args.num_test
    resident = [
        torch.zeros(views, n, cells, dtype=torch.uint8, device=device),  # x_views
        torch.zeros(views, n, dtype=torch.int64, device=device),  # y_views
        torch.zeros(views, n, cells, dtype=torch.int8, device=device),  # p_views
        torch.zeros(m, cells, dtype=torch.uint8, device=device),  # x_test
        torch.zeros(m, dtype=torch.int64, device=device),  # y_test
        torch.zeros(n, cells, dtype=torch.uint8, device=device),  # this epoch's x_train
        torch.zeros(n, dtype=torch.int64, device=device),  # y_train
        torch.zeros(n, cells, dtype=torch.int8, device=device),  # p_train
    ]
    model = create_model(args.grid_size, args.dim, args.depth, args.dropout).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(0)  # random but reproducible, and leaves the global RNG alone
    xb = torch.randint(0, 4, (batch_size, cells), generator=gen).to(device)  # (B, T)
    yb = torch.randint(0, len(ACTIONS), (batch_size,), generator=gen).to(device)  # (B,)
    pb = torch.randint(-1, len(ACTIONS), (batch_size, cells), generator=gen).to(device)  # (B, T)
    use_autocast = device.startswith("cuda")

    def step(_resident=resident):  # the default argument keeps the data alive with the step
        return train_step(model, optimizer, xb, yb, pb, args, use_autocast)

    return step


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode (no dropout)."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size]).float()  # (b, 5)
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(-1) == y[i : i + batch_size]).sum()
    model.train()
    return loss_sum.item() / len(y), correct.item() / len(y)


def train(args: argparse.Namespace, metrics: MetricsStream, stop: StopFlag) -> int:
    """Runs the whole training; returns the process exit code (0, or 128+signal when stopped)."""
    # 1. Resolve everything the run depends on, and announce it before the slow parts. Under
    #    torchrun each rank trains on its share of every batch (DDP), rank 0 alone reports.
    dist = Distributed()
    device = dist.device(pick_device(args.device))
    dist.init(device)
    rank_batch = dist.share(args.batch_size)
    seed_everything(args.seed)
    resume = load_checkpoint(args.resume, "trm_nav.py", RESUME_KEYS) if args.resume else None
    ckpt_dir = Path(args.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics.event(
        "start",
        config={
            **vars(args),
            "checkpoint_dir": str(ckpt_dir),
            "resolved_device": device,
            "resume_epoch": resume["epoch"] if resume else None,
            "world_size": dist.world_size,
            "global_batch_size": args.batch_size,
            "batch_size_per_rank": rank_batch,
        },
    )

    # 2. Data: small enough to live on the device whole, so batches are just index lookups.
    #    Tokens stay uint8 (8 views of 100K states would take 400 MB as int64); batches widen them.
    t0 = time.time()
    train_split, val_split = load_data(args)
    meta = train_split["meta"]
    num_views, n_train, grid_size = meta["views"], meta["num_samples"], meta["grid_size"]
    x_views = train_split["tokens"].reshape(num_views, n_train, -1).to(device)  # (V, N, T) uint8
    y_views = train_split["labels"].reshape(num_views, n_train).to(device)  # (V, N)
    p_views = train_split["policy"].reshape(num_views, n_train, -1).to(device)  # (V, N, T) int8
    x_test, y_test = val_split["tokens"].to(device), val_split["labels"].to(device)  # (M, T), (M,)
    counts = torch.bincount(y_views[0], minlength=len(ACTIONS)).tolist()
    source = f"from {args.train_path} and {args.val_path}" if args.train_path else "generated"
    say = dist.say
    say(
        f"Data: {n_train} train states x {num_views} views / {len(y_test)} test, {source}, {grid_size}x{grid_size} "
        f"grids, in {time.time() - t0:.1f}s; label counts {dict(zip(ACTIONS, counts, strict=True))}; device {device}",
        flush=True,
    )

    # 3. Model and optimizer.
    model_config = {"grid_size": grid_size, "dim": args.dim, "depth": args.depth, "dropout": args.dropout}
    net = create_model(**model_config).to(device)  # identical on every rank: the same seed
    model = dist.wrap(net, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    use_autocast = device.startswith("cuda")  # bf16 matmuls pay off on a GPU; on a CPU they only cost accuracy

    def lr_at(step: int) -> float:
        if args.lr_schedule == "constant":
            return args.lr
        if step < warmup:  # a short warm-up keeps the first, largest Adam updates from wrecking the init
            return args.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    say(f"Model: {sum(p.numel() for p in net.parameters()):,} parameters", flush=True)

    # 4. Start fresh, or pick up where a checkpoint left off (weights, Adam moments, the lr
    #    schedule's step, early-stopping state, history, and the RNG so batches continue as they would have).
    history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
    best_acc, best_epoch, epochs_done, step = -1.0, 0, 0, 0
    val_loss = val_acc = None
    if resume is not None:  # the grid size comes with the data: checked only now
        check_same_model(resume, model_config, args.resume, "--dim, --depth, --dropout and data")
        net.load_state_dict(resume["model_state_dict"])
        optimizer.load_state_dict(resume["optimizer_state_dict"])
        step, epochs_done = resume["step"], resume["epoch"]
        best_acc, best_epoch = resume["best_val_acc"], resume["best_epoch"]
        history = {k: list(resume["history"][k]) for k in HISTORY_KEYS}
        val_acc, val_loss = resume.get("val_acc"), resume.get("val_loss")
        restore_rng(resume["rng"], device)
        say(f"Resumed from {args.resume}: epoch {epochs_done}, step {step}, best val acc {best_acc:.4f}", flush=True)
    if dist.enabled:  # each rank draws its own views and dropout masks, reproducibly from this point
        torch.manual_seed(args.seed + 1 + dist.rank + dist.world_size * epochs_done)
    reason = "completed"

    def save(kind: str, epoch: int) -> None:
        save_checkpoint(
            metrics,
            {
                "epoch": epoch,
                "model_state_dict": net.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "val_acc": val_acc,
                "val_loss": val_loss,
                "config": model_config,
                "step": step,
                "best_val_acc": best_acc,
                "best_epoch": best_epoch,
                "history": history,
                "rng": rng_state(device),
                "data": {"train": meta, "val": val_split["meta"]},
            },
            ckpt_dir / f"{kind}.pt",
            kind=kind,
            step=step,
            epoch=epoch,
        )

    # 5. Train, evaluate after every epoch, keep the best, stop early when it stops improving.
    for epoch in range(epochs_done + 1, args.epochs + 1):
        # 5a. One pass; with 8 views every state is shown in a freshly drawn orientation.
        t_epoch = time.time()
        rows = torch.arange(n_train, device=device)
        view = torch.randint(0, num_views, (n_train,), device=device)
        x_train, y_train, p_train = x_views[view, rows], y_views[view, rows], p_views[view, rows]  # (N, T) (N,) (N, T)
        order = _epoch_order(n_train, epoch, args.seed, dist, device)  # this rank's share, shuffled
        loss_sum, aux_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        stopping = False
        for i in range(0, len(order), rank_batch):
            if stopping := dist.should_stop(stop, device):
                break
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i : i + rank_batch]
            xb, yb, pb = x_train[idx].long(), y_train[idx], p_train[idx].long()  # (B, T), (B,), (B, T)
            loss, aux, logits = train_step(model, optimizer, xb, yb, pb, args, use_autocast)
            if aux is not None:
                aux_sum += aux * len(idx)
            step += 1
            # Accumulate on the device: .item() here would be a CPU-GPU sync point every batch.
            loss_sum += loss * len(idx)
            correct += (logits.argmax(-1) == yb).sum()
            seen += len(idx)
        stopping = stopping or (not dist.enabled and stop.requested)  # alone: a signal after the last batch
        if stopping:
            break
        loss_total, aux_total, correct_total, seen = dist.sum(loss_sum, aux_sum, correct, seen)  # over the ranks
        train_loss, train_acc = loss_total / seen, correct_total / seen
        aux_loss = {"aux_loss": aux_total / seen} if args.aux_weight else {}  # loss: the agent's cell only
        samples_per_s = seen / (time.time() - t_epoch)  # the sum above already waited for the device

        # 5b. Validate, report, checkpoint.
        val_loss, val_acc = evaluate(net, x_test, y_test)  # every rank: the same weights, the same answer
        epochs_done = epoch
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch
        for key, value in zip(HISTORY_KEYS, (train_loss, train_acc, val_loss, val_acc, lr), strict=True):
            history[key].append(value)
        say(
            f"Epoch {epoch}/{args.epochs} - Train Loss: {train_loss:.4f}, Train Acc: {train_acc:.4f} "
            f"Val Loss: {val_loss:.4f}, Val Acc: {val_acc:.4f}" + (" *" if improved else ""),
            flush=True,
        )
        metrics.log(step, "train", epoch=epoch, loss=train_loss, acc=train_acc, lr=lr, sps=samples_per_s, **aux_loss)
        metrics.log(step, "val", epoch=epoch, loss=val_loss, acc=val_acc)
        if improved:
            save("best", epoch)
        save("last", epoch)
        if dist.is_main:
            atomic_write_json(history, ckpt_dir / "history.json")
        # Decided together: a rank that left for the barrier while the others wait in the next
        # step's collective would hang the job.
        if dist.any(bool(args.patience and epoch - best_epoch >= args.patience), device):
            reason = "early_stopping"
            say(f"Early stopping: no better val acc for {args.patience} epochs", flush=True)
            break

    # 6. A stop request lands here mid-epoch: keep the weights, then say why we are exiting.
    return finish(
        metrics,
        stop,
        stopped=stop.requested or (dist.enabled and stopping),
        save_last=lambda: save("last", epochs_done),
        last_path=ckpt_dir / "last.pt",
        best_name="best_val_acc",
        best_value=best_acc,
        best_epoch=best_epoch,
        best_line="Best val acc {value:.4f} at epoch {epoch}",
        epochs=epochs_done,
        steps=step,
        reason=reason,
    )


def _epoch_order(n: int, epoch: int, seed: int, dist: Distributed, device: str) -> torch.Tensor:
    """The sample indices this rank trains on in `epoch`, shuffled: all of them alone, else its
    share from DistributedSampler (padded so every rank takes the same number of steps)."""
    if not dist.enabled:
        return torch.randperm(n, device=device)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), device=device)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses flags and runs training under the trainer contract (trainkit.run_trainer)."""
    return run_trainer(train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
