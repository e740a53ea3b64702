"""Train a convolutional autoencoder on photographs and report its reconstruction PSNR in dB.

Usage:
    python trainers/prepare_images.py                   # once: images/training_diverse/{train,val}/*.png
    python trainers/autoencoder.py                      # baseline, 30 epochs on all training images
    python trainers/autoencoder.py --arch residual --lr 5e-5 --warmup-epochs 3 --optimizer adamw \\
        --weight-decay 1e-5 --max-grad-norm 0.5 --quick-search      # seed 003's "Residual v3" recipe

Three architectures share one layout: three stride-2 stages take a (3, S, S) image down to a
(--latent-channels, S/8, S/8) bottleneck, and a mirrored decoder brings it back:
    baseline   plain conv + ReLU stages, no normalisation (the reference everything is compared to)
    residual   ResidualAutoencoder: GroupNorm residual blocks at every stage
    attention  AttentionAutoencoder: the residual model plus self-attention over the S/8 x S/8
               positions on both sides of the bottleneck, so distant regions inform each other
All three have the same latent size, so their PSNRs compare at equal compression.

--quick-search is seed 003's QUICK_SEARCH: 5% of the training images and 20 epochs (unless
--data-fraction or --epochs are given), to check that a recipe is stable and improving before
a full run. The validation split is always used whole, so quick and full runs report the same
metric on the same images.

Outputs, in --checkpoint-dir (default $TRAINGUARD_RUN_DIR/checkpoints, else ./checkpoints):
    best.pt  the checkpoint with the best validation PSNR so far
    last.pt  the latest checkpoint, written every epoch and on SIGTERM/SIGINT

Under trainguard, $TRAINGUARD_METRICS receives a start event (config, parameter count, latent
size), one train record (loss, lr, grad_norm, sps) and one val record (psnr_db, loss,
latent_values, compression_ratio) per epoch, checkpoint events and a done event. SIGTERM or
SIGINT stops after the current batch: last.pt is written, then the process exits 143 or 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if str(Path(__file__).resolve().parent) not in sys.path:  # lets tests import this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainkit import (  # noqa: E402
    Distributed,
    MetricsStream,
    StopFlag,
    finish,
    load_checkpoint,
    pick_device,
    psnr_db,
    run_trainer,
    save_checkpoint,
    seed_everything,
)

ARCHS = ("baseline", "residual", "attention")
DOWNSAMPLE = 8  # three stride-2 stages
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
QUICK_SEARCH_FRACTION, QUICK_SEARCH_EPOCHS = 0.05, 20
FULL_EPOCHS = 30  # seed 003's full runs: 30 epochs
MODEL_KEYS = ("arch", "base_channels", "latent_channels", "image_size")
RESUME_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "best_val_psnr_db", "best_epoch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line and resolves the --quick-search defaults; no flag is required."""
    default_dir = (
        Path(os.environ["TRAINGUARD_RUN_DIR"]) / "checkpoints"
        if os.environ.get("TRAINGUARD_RUN_DIR")
        else Path("checkpoints")
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    # data
    arg("--data-dir", type=Path, default=Path("images/training_diverse"), help="folder with train/ and val/ images")
    arg(
        "--image-size",
        type=int,
        default=128,
        help="side S of the square images (a multiple of 8); others are centre-cropped to a square and resized",
    )
    arg(
        "--data-fraction",
        type=float,
        default=None,
        help="fraction of the training images used, drawn with --seed "
        f"(default 1.0, or {QUICK_SEARCH_FRACTION} with --quick-search)",
    )
    arg(
        "--quick-search",
        action="store_true",
        help=f"seed 003's QUICK_SEARCH: {QUICK_SEARCH_FRACTION * 100:g}%% of "
        f"the training data and {QUICK_SEARCH_EPOCHS} epochs, unless --data-fraction/--epochs say otherwise",
    )
    # model
    arg("--arch", choices=ARCHS, default="baseline", help="baseline conv, residual blocks, or residual + attention")
    arg(
        "--base-channels",
        type=int,
        default=64,
        help="channels of the first stage (doubled at each of the next "
        "two); seed 003 used 48 for attention to halve its size",
    )
    arg("--latent-channels", type=int, default=16, help="channels of the (S/8, S/8) bottleneck; sets the compression")
    # optimisation
    arg(
        "--optimizer",
        choices=("adam", "adamw"),
        default="adam",
        help="adam (L2 in the gradient) or adamw (decoupled weight decay)",
    )
    arg("--lr", type=float, default=1e-4, help="peak learning rate, reached after --warmup-epochs")
    arg("--weight-decay", type=float, default=0.0, help="weight decay (L2 for adam, decoupled for adamw)")
    arg(
        "--warmup-epochs",
        type=int,
        default=0,
        help="linear warm-up from lr/10 to lr over this many epochs, "
        "updated every step (0: constant lr from the start)",
    )
    arg("--max-grad-norm", type=float, default=1.0, help="clip the global gradient norm to this (0 disables)")
    arg(
        "--epochs",
        type=int,
        default=None,
        help=f"passes over the training images (default {FULL_EPOCHS}, or {QUICK_SEARCH_EPOCHS} with --quick-search)",
    )
    arg("--batch-size", type=int, default=16, help="images per optimizer step: the global batch, split over ranks")
    # run
    arg("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; auto prefers cuda, then mps")
    arg(
        "--amp",
        choices=("auto", "off"),
        default="auto",
        help="auto: bfloat16 autocast on CUDA GPUs that support it (fp32 elsewhere); off: always fp32",
    )
    arg("--seed", type=int, default=42, help="seed for the data subset, the initial weights and the batch order")
    arg("--checkpoint-dir", type=Path, default=default_dir, help="where best.pt and last.pt go")
    arg("--resume", type=Path, default=None, help="a last.pt/best.pt to continue from (same model flags)")
    args = p.parse_args(argv)

    if args.epochs is None:
        args.epochs = QUICK_SEARCH_EPOCHS if args.quick_search else FULL_EPOCHS
    if args.data_fraction is None:
        args.data_fraction = QUICK_SEARCH_FRACTION if args.quick_search else 1.0
    for name in ("epochs", "batch_size", "base_channels", "latent_channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_size < DOWNSAMPLE or args.image_size % DOWNSAMPLE:
        p.error(f"--image-size must be a positive multiple of {DOWNSAMPLE}, got {args.image_size}")
    if not 0.0 < args.data_fraction <= 1.0:
        p.error("--data-fraction must be in (0, 1]")
    if args.lr <= 0 or args.weight_decay < 0 or args.max_grad_norm < 0 or args.warmup_epochs < 0:
        p.error("need --lr > 0 and --weight-decay, --max-grad-norm, --warmup-epochs >= 0")
    return args


# ---------------------------------------------------------------------------- data


def find_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted so the order never depends on the file system."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path, size: int) -> np.ndarray:
    """One RGB image as uint8 (3, size, size); non-square ones lose the edges of their long side."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, S, S)


def subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * n) indices (at least 1), a random draw fixed by ``seed``, in ascending order."""
    keep = max(1, round(fraction * n))
    return np.sort(np.random.default_rng([seed, 2024]).permutation(n)[:keep])


def load_split(data_dir: Path, split: str, size: int, fraction: float = 1.0, seed: int = 0) -> torch.Tensor:
    """All images of one split as uint8 (N, 3, size, size); uint8 keeps 4x less memory than float.

    Raises:
        FileNotFoundError: If the folder is missing or has no images, naming the script that makes them.
    """
    folder = Path(data_dir) / split
    files = find_images(folder) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no images in {folder}: expected {data_dir}/train/ and {data_dir}/val/ with PNG files. "
            "Run `python trainers/prepare_images.py` to make them, or pass --data-dir."
        )
    files = [files[i] for i in subset_indices(len(files), fraction, seed)]
    return torch.from_numpy(np.stack([load_image(f, size) for f in files]))  # (N, 3, S, S) uint8


# ---------------------------------------------------------------------------- models


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: independent of batch size, unlike BatchNorm at batch 16."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class BaselineAutoencoder(nn.Module):
    """Plain conv encoder/decoder: image (B, 3, S, S) -> latent (B, L, S/8, S/8) -> image."""

    def __init__(self, base_channels: int = 64, latent_channels: int = 16):
        super().__init__()
        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, c1, S/2, S/2)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, c2, S/4, S/4)
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, c3, S/8, S/8)
            nn.Conv2d(c3, latent_channels, 1),  # (B, L, S/8, S/8)
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c3, 1),
            nn.ReLU(),  # (B, c3, S/8, S/8)
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, c2, S/4, S/4)
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, c1, S/2, S/2)
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1),
            nn.ReLU(),  # (B, c1, S, S)
            nn.Conv2d(c1, 3, 3, padding=1),  # (B, 3, S, S)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, S, S) in [0, 1]
        return torch.sigmoid(self.decoder(self.encode(x)))  # (B, 3, S, S) in [0, 1]


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(act(norm(x)))))): the skip lets gradients reach early layers intact."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return x + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual path."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = math.gcd(heads, channels)  # heads must divide the channels
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)  # (B, nh, d, T)
        q, k, v = (t.transpose(-1, -2) for t in (q, k, v))  # (B, nh, T, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))  # (B, C, H, W)


class ResidualAutoencoder(nn.Module):
    """Residual-block encoder/decoder with the baseline's shapes: (B, 3, S, S) -> (B, L, S/8, S/8) -> image.

    The first convolution already has stride 2: a residual block at full resolution would cost
    4x the rest of the encoder on a CPU for little gain in PSNR.
    """

    attention = False

    def __init__(self, base_channels: int = 64, latent_channels: int = 16):
        super().__init__()
        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels
        mid = [ResidualBlock(c3), SelfAttention(c3)] if self.attention else [ResidualBlock(c3)]
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            ResidualBlock(c1),  # (B, c1, S/2, S/2)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            ResidualBlock(c2),  # (B, c2, S/4, S/4)
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            ResidualBlock(c3),
            *mid,  # (B, c3, S/8, S/8)
            norm(c3),
            nn.SiLU(),
            nn.Conv2d(c3, latent_channels, 1),  # (B, L, S/8, S/8)
        )
        mid = [SelfAttention(c3), ResidualBlock(c3)] if self.attention else [ResidualBlock(c3)]
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c3, 1),
            *mid,
            ResidualBlock(c3),  # (B, c3, S/8, S/8)
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c3, c2, 3, padding=1),
            ResidualBlock(c2),  # (B, c2, S/4, S/4)
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c2, c1, 3, padding=1),
            ResidualBlock(c1),  # (B, c1, S/2, S/2)
            nn.Upsample(scale_factor=2),
            nn.Conv2d(c1, c1, 3, padding=1),  # (B, c1, S, S)
            norm(c1),
            nn.SiLU(),
            nn.Conv2d(c1, 3, 3, padding=1),  # (B, 3, S, S)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, S, S) in [0, 1]
        return torch.sigmoid(self.decoder(self.encode(x)))  # (B, 3, S, S) in [0, 1]


class AttentionAutoencoder(ResidualAutoencoder):
    """The residual autoencoder with self-attention on both sides of the (S/8, S/8) bottleneck."""

    attention = True


def create_model(
    arch: str = "baseline", base_channels: int = 64, latent_channels: int = 16, image_size: int = 128
) -> nn.Module:
    """Builds a model from the four numbers a checkpoint's ``config`` stores (image_size only sets the latent)."""
    classes = {"baseline": BaselineAutoencoder, "residual": ResidualAutoencoder, "attention": AttentionAutoencoder}
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    return classes[arch](base_channels, latent_channels)


def latent_shape(latent_channels: int, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of one image's bottleneck."""
    return (latent_channels, image_size // DOWNSAMPLE, image_size // DOWNSAMPLE)


def latent_report(latent_channels: int, image_size: int) -> dict:
    """latent_shape, latent_values (numbers per image) and compression_ratio (pixel values / latent values).

    The ratio counts values, not bits: the latent is float, the pixels are 8-bit.
    """
    shape = latent_shape(latent_channels, image_size)
    values = math.prod(shape)
    return {"latent_shape": list(shape), "latent_values": values, "compression_ratio": 3 * image_size**2 / values}


def memory_step(argv: list[str], batch_size: int, device: str = "cpu"):
    """One training step as the loop runs it, for pre-flight's memory estimate (trainers/memprobe.py).

    Builds what training keeps on the device: the model, its optimizer, the train and val
    images as uint8 (counted in --data-dir, or none when it is missing) and one float batch.

    Args:
        argv: The flags the run gets (parsed with this trainer's own parser).
        batch_size: Images per step; replaces --batch-size.
        device: Where to build everything.

    Returns:
        A closure running one optimizer step: forward, MSE, backward, clipping, update.
    """
    args = parse_args(argv)
    data = Path(args.data_dir)
    n_train = len(find_images(data / "train")) if (data / "train").is_dir() else 0
    n_val = len(find_images(data / "val")) if (data / "val").is_dir() else 0
    n_train = max(1, round(args.data_fraction * n_train)) if n_train else 0
    size = args.image_size
    resident = torch.zeros(n_train + n_val, 3, size, size, dtype=torch.uint8, device=device)  # the images
    model = create_model(**{k: getattr(args, k) for k in MODEL_KEYS}).to(device).train()
    optimizer = make_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(0)  # random but reproducible, and leaves the global RNG alone
    images = torch.rand(batch_size, 3, size, size, generator=gen).to(device)  # (B, 3, S, S)

    def step(_resident=resident):  # the default argument keeps the images alive with the step
        return train_step(model, optimizer, images, args.max_grad_norm, lambda: autocast_for(device, args.amp))

    return step


# ---------------------------------------------------------------------------- training pieces


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Seed 003's warm-up: linear from lr/10 at step 0 to lr at ``warmup_steps``, then constant."""
    if step >= warmup_steps:
        return lr
    return lr * (0.1 + 0.9 * step / warmup_steps)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam folds weight decay into the gradient (so Adam rescales it); AdamW applies it to the weights."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(model.parameters(), lr=lr, weight_decay=weight_decay)


def autocast_for(device: str, amp: str):
    """bfloat16 autocast on a CUDA GPU that has it (no GradScaler needed); fp32 on CPU/MPS, where it rarely helps."""
    if amp == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, max_grad_norm: float, amp=nullcontext
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MSE reconstruction step; returns the loss and the gradient norm BEFORE clipping (both 0-d tensors).

    The pre-clip norm is what shows whether clipping is active: a norm far above
    --max-grad-norm every step means the step size is set by the clip, not by the lr.
    """
    with amp():
        output = model(images)  # (B, 3, S, S)
    loss = F.mse_loss(output.float(), images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:  # still measured, so the metric exists with clipping off
        grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters() if p.grad is not None])
        )
    optimizer.step()
    return loss.detach(), grad_norm.detach()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, batch_size: int, amp=nullcontext) -> tuple[float, float]:
    """Mean MSE and mean per-image PSNR (dB) over uint8 images (N, 3, S, S), in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    mse_sum, psnr_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float() / 255.0  # (b, 3, S, S)
        with amp():
            out = model(x)  # (b, 3, S, S)
        mse_sum += (out.float() - x).pow(2).mean(dim=(1, 2, 3)).sum()
        psnr_sum += psnr_db(out, x).sum()
    model.train()
    return mse_sum.item() / len(images), psnr_sum.item() / len(images)


# ---------------------------------------------------------------------------- training loop


def train(args: argparse.Namespace, metrics: MetricsStream, stop: StopFlag) -> int:
    """Runs the whole training; returns the process exit code (0, or 128+signal when stopped)."""
    # 1. Resolve the device and the seed; read the resume checkpoint first so a mismatch fails fast.
    # Under torchrun each rank trains on its share of every batch (DDP); rank 0 alone reports.
    dist = Distributed()
    device = dist.device(pick_device(args.device))
    dist.init(device)
    rank_batch = dist.share(args.batch_size)
    say = dist.say
    seed_everything(args.seed)
    ckpt_dir = Path(args.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model_config = {k: getattr(args, k) for k in MODEL_KEYS}
    resume = None
    if args.resume:
        flags = "--arch, --base-channels, --latent-channels and --image-size"
        resume = load_checkpoint(args.resume, "autoencoder.py", RESUME_KEYS, model_config, flags)

    def amp():  # a fresh context manager per use
        return autocast_for(device, args.amp)

    # 2. Data: decoded once into uint8 tensors on the device; batches are index lookups.
    t0 = time.time()
    train_images = load_split(args.data_dir, "train", args.image_size, args.data_fraction, args.seed).to(device)
    val_images = load_split(args.data_dir, "val", args.image_size).to(device)  # (M, 3, S, S), always whole
    n_train = len(train_images)
    say(
        f"Data: {n_train} train ({args.data_fraction:.0%}) / {len(val_images)} val images of "
        f"{args.image_size}x{args.image_size} from {args.data_dir} in {time.time() - t0:.1f}s, device {device}",
        flush=True,
    )

    # 3. Model, optimizer and schedule; the warm-up is counted in steps so it is smooth within epochs.
    net = create_model(**model_config).to(device)  # identical on every rank: the same seed
    model = dist.wrap(net, device)
    optimizer = make_optimizer(net, args.optimizer, args.lr, args.weight_decay)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    warmup_steps = args.warmup_epochs * steps_per_epoch
    num_params = sum(p.numel() for p in net.parameters())
    latent = latent_report(args.latent_channels, args.image_size)
    start_epoch, best_psnr, best_epoch = 1, -math.inf, 0
    if resume is not None:
        net.load_state_dict(resume["model_state_dict"])
        optimizer.load_state_dict(resume["optimizer_state_dict"])
        start_epoch = resume["epoch"] + 1
        best_psnr, best_epoch = resume["best_val_psnr_db"], resume["best_epoch"]
    step = (start_epoch - 1) * steps_per_epoch
    metrics.event(
        "start",
        config={
            **vars(args),
            "checkpoint_dir": str(ckpt_dir),
            "resolved_device": device,
            "world_size": dist.world_size,
            "global_batch_size": args.batch_size,
            "batch_size_per_rank": rank_batch,
        },
        num_params=num_params,
        num_train=n_train,
        num_val=len(val_images),
        steps_per_epoch=steps_per_epoch,
        resumed_from_epoch=start_epoch - 1 if resume is not None else None,
        **latent,
    )
    if dist.enabled:  # each rank its own dropout and noise, reproducibly from this point
        torch.manual_seed(args.seed + 1 + dist.rank + dist.world_size * (start_epoch - 1))
    say(
        f"Model: {args.arch}, {num_params:,} parameters, latent {tuple(latent['latent_shape'])} = "
        f"{latent['latent_values']} values per image ({latent['compression_ratio']:.1f}x fewer than pixels)",
        flush=True,
    )

    # 4. Train, validate after every epoch, keep the best by val PSNR.
    val_loss = val_psnr = None
    epochs_done = start_epoch - 1

    def save(kind: str, epoch: int) -> None:
        save_checkpoint(
            metrics,
            {
                "epoch": epoch,
                "model_state_dict": net.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "val_psnr_db": val_psnr,
                "val_loss": val_loss,
                "best_val_psnr_db": best_psnr,
                "best_epoch": best_epoch,
                "config": model_config,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            },
            ckpt_dir / f"{kind}.pt",
            kind=kind,
            step=step,
            epoch=epoch,
        )

    for epoch in range(start_epoch, args.epochs + 1):
        # 4a. One pass in an order fixed by (seed, epoch), so a resumed run sees the batches it would have.
        t_epoch = time.time()
        order = _epoch_order(n_train, epoch, args.seed, dist, device)
        loss_sum, norm_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        seen = batches = 0
        stopping = False
        lr = lr_at(step, args.lr, warmup_steps)
        for i in range(0, len(order), rank_batch):
            if stopping := dist.should_stop(stop, device):
                break
            lr = lr_at(step, args.lr, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = train_images[order[i : i + rank_batch]].float() / 255.0  # (B, 3, S, S)
            loss, grad_norm = train_step(model, optimizer, images, args.max_grad_norm, amp)
            step += 1
            # Accumulated on the device: .item() here would be a CPU-GPU sync point every batch.
            loss_sum += loss * len(images)
            norm_sum += grad_norm
            seen += len(images)
            batches += 1
        stopping = stopping or (not dist.enabled and stop.requested)  # alone: a signal after the last batch
        if stopping:
            break
        loss_total, norm_total, seen, batches = dist.sum(loss_sum, norm_sum, seen, batches)  # over the ranks
        train_loss, mean_grad_norm = loss_total / seen, norm_total / batches
        images_per_s = seen / (time.time() - t_epoch)  # the sum above already waited for the device

        # 4b. Validate, report, checkpoint.
        val_loss, val_psnr = evaluate(net, val_images, max(args.batch_size, 32), amp)  # the same on every rank
        epochs_done = epoch
        improved = val_psnr > best_psnr
        if improved:
            best_psnr, best_epoch = val_psnr, epoch
        say(
            f"Epoch {epoch}/{args.epochs} - Train Loss: {train_loss:.5f}, Val Loss: {val_loss:.5f}, "
            f"Val PSNR: {val_psnr:.2f} dB, lr {lr:.2e}, grad norm {mean_grad_norm:.3f}" + (" *" if improved else ""),
            flush=True,
        )
        metrics.log(step, "train", epoch=epoch, loss=train_loss, lr=lr, grad_norm=mean_grad_norm, sps=images_per_s)
        metrics.log(
            step,
            "val",
            epoch=epoch,
            psnr_db=val_psnr,
            loss=val_loss,
            latent_values=latent["latent_values"],
            compression_ratio=latent["compression_ratio"],
        )
        if improved:
            save("best", epoch)
        save("last", epoch)

    # 5. A stop request lands here mid-epoch: keep the weights, then say why we are exiting.
    return finish(
        metrics,
        stop,
        stopped=stop.requested or (dist.enabled and stopping),
        save_last=lambda: save("last", epochs_done),
        last_path=ckpt_dir / "last.pt",
        best_name="best_val_psnr_db",
        best_value=best_psnr,
        best_epoch=best_epoch,
        best_line="Best val PSNR {value:.2f} dB at epoch {epoch}",
        epochs=epochs_done,
        steps=step,
    )


def _epoch_order(n: int, epoch: int, seed: int, dist: Distributed, device: str) -> torch.Tensor:
    """The image indices this rank trains on in `epoch`, in an order fixed by (seed, epoch) so a
    resumed run sees the batches it would have: all of them alone, else this rank's share from
    DistributedSampler (padded so every rank takes the same number of steps)."""
    if not dist.enabled:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(device)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(
        range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed * 100_003
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), device=device)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses flags and runs training under the trainer contract (trainkit.run_trainer)."""
    return run_trainer(train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
