"""A user's own training script, as seed 000's project has it: a Gaussian-splat image decoder.

It knows nothing of trainguard. It takes seed 000's flags, keeps its old default lr 1e-4 (the
value seed 000 learned to avoid), saves checkpoints to
--output_dir, and writes its metrics as JSON lines to $TRAINGUARD_METRICS when that is set
(a few lines below, no import). `experiments/trainers/gaussian_decoder.toml` describes it to
trainguard; `memory_step` at the end lets pre-flight estimate its memory.

    python scripts/training/train_gaussian_decoder.py --experiment 2 --data_dir images/training_diverse \
        --output_dir checkpoints/exp2 --epochs 50 --batch_size 4 --image_size 128 --lr 1e-5

Renderers: `tile` evaluates the Gaussians a chunk at a time under activation checkpointing,
so its memory grows with the chunk; `wavefield` and `fourier` hold every Gaussian at every
pixel (B x K x H x W) at once, which is what crashed on seed 000's 16 GB card.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.checkpoint import checkpoint

TILE_CHUNK = 32  # Gaussians per checkpointed chunk of the tile renderer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", type=int, default=2, choices=[2, 3, 4])
    p.add_argument("--data_dir", type=Path, default=Path("images/training_diverse"))
    p.add_argument("--output_dir", type=Path, default=Path("checkpoints/exp2"))
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--num_gaussians", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--occ_weight", type=float, default=1.0)
    p.add_argument("--occ_threshold", type=float, default=0.5)
    p.add_argument("--phase_retrieval_weight", type=float, default=0.0, help="physics loss; seed 000: 0.05, not 0.1")
    p.add_argument("--use_phase_blending", action="store_true")
    p.add_argument(
        "--renderer",
        choices=["tile", "wavefield", "fourier"],
        default=None,
        help="default: tile, or fourier for experiment 4",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.renderer is None:
        args.renderer = "fourier" if args.experiment == 4 else "tile"
    if args.experiment == 4:
        args.use_phase_blending = True
    return args


class Decoder(nn.Module):
    """CNN encoder; each cell of a sqrt(K) x sqrt(K) grid predicts one Gaussian."""

    def __init__(self, num_gaussians: int, image_size: int):
        super().__init__()
        self.grid = math.isqrt(num_gaussians)
        self.size = image_size
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, 1, 1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(self.grid),
            nn.Conv2d(64, 9, 1),  # dx, dy, log sx, log sy, rotation, r, g, b, opacity... + phase below
        )
        self.phase = nn.Conv2d(64, 1, 1)
        self.background = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder[:-1](x)  # (B, 64, G, G)
        out = self.encoder[-1](feats).flatten(2).transpose(1, 2)  # (B, K, 9)
        g, cell = self.grid, self.size / self.grid
        ys, xs = torch.meshgrid(torch.arange(g, device=x.device), torch.arange(g, device=x.device), indexing="ij")
        centre = torch.stack([xs, ys], -1).reshape(1, -1, 2).to(x.dtype) * cell + cell / 2  # (1, K, 2)
        return {
            "means": centre + torch.tanh(out[..., :2]) * cell,
            "scales": F.softplus(out[..., 2:4]) * cell * 0.5 + 0.5,
            "rotation": out[..., 4],
            "colour": torch.sigmoid(out[..., 5:8]),
            "opacity": torch.sigmoid(out[..., 8]),
            "phase": self.phase(feats).flatten(1) * math.pi,  # (B, K)
        }


def splat(means, scales, rotation, opacity, size: int) -> torch.Tensor:
    """Weights of each Gaussian at each pixel: (B, K, H, W)."""
    coords = torch.arange(size, device=means.device, dtype=means.dtype)
    dx = coords.view(1, 1, 1, size) - means[..., 0, None, None]
    dy = coords.view(1, 1, size, 1) - means[..., 1, None, None]
    c, s = torch.cos(rotation)[..., None, None], torch.sin(rotation)[..., None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    d2 = (u / scales[..., 0, None, None]) ** 2 + (v / scales[..., 1, None, None]) ** 2
    return opacity[..., None, None] * torch.exp(-0.5 * d2)


def render(g: dict[str, torch.Tensor], size: int, renderer: str, phase_blending: bool) -> tuple[torch.Tensor, ...]:
    """The image (B, 3, H, W) and the accumulated opacity (B, H, W)."""
    colour = g["colour"]
    if phase_blending:  # complex amplitudes: overlapping Gaussians interfere
        colour = torch.complex(colour * torch.cos(g["phase"])[..., None], colour * torch.sin(g["phase"])[..., None])

    def part(means, scales, rotation, opacity, colour):
        w = splat(means, scales, rotation, opacity, size)
        return torch.einsum("bkhw,bkc->bchw", w.to(colour.dtype), colour), w.sum(1)

    if renderer == "tile":
        acc, cover = 0, 0
        for k in range(0, colour.shape[1], TILE_CHUNK):
            sl = slice(k, k + TILE_CHUNK)
            a, c = checkpoint(
                part,
                g["means"][:, sl],
                g["scales"][:, sl],
                g["rotation"][:, sl],
                g["opacity"][:, sl],
                colour[:, sl],
                use_reentrant=False,
            )
            acc, cover = acc + a, cover + c
    else:
        acc, cover = part(g["means"], g["scales"], g["rotation"], g["opacity"], colour)
    if phase_blending:
        acc = acc.abs()
    return acc, cover


class Model(nn.Module):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args
        self.decoder = Decoder(args.num_gaussians, args.image_size)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.args
        g = self.decoder(x)
        acc, cover = render(g, a.image_size, a.renderer, a.use_phase_blending)
        image = acc + (1 - cover.clamp(max=1))[:, None] * torch.sigmoid(self.decoder.background)[None, :, None, None]
        recon = F.mse_loss(image, x)
        occ = F.relu(a.occ_threshold - cover).mean()
        loss = recon + a.occ_weight * occ
        if a.phase_retrieval_weight:
            mag = (torch.fft.rfft2(image, norm="ortho").abs() - torch.fft.rfft2(x, norm="ortho").abs()).abs().mean()
            loss = loss + a.phase_retrieval_weight * mag
        return {"loss": loss, "recon": recon.detach(), "image": image.detach()}


def load_images(folder: Path, size: int) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG images in {folder}")
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))  # (N, 3, S, S) uint8


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    return float(-10 * torch.log10(F.mse_loss(image.clamp(0, 1), target).clamp_min(1e-10)))


class Metrics:
    """JSON lines to $TRAINGUARD_METRICS, if set: one object per step or event, flushed."""

    def __init__(self):
        path = os.environ.get("TRAINGUARD_METRICS")
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the run

    def write(self, **record):
        if self.file:
            self.file.write(json.dumps({"t": time.time(), **record}) + "\n")


def save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a half checkpoint under the real name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    train = load_images(args.data_dir / "train", args.image_size)
    val = load_images(args.data_dir / "val", args.image_size)
    model = Model(args).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    metrics.write(event="start", config={k: str(v) for k, v in vars(args).items()})
    step, best = 0, -math.inf
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train))
        for i in range(0, len(train), args.batch_size):
            x = train[order[i : i + args.batch_size]].to(device).float() / 255
            out = model(x)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            metrics.write(step=step, epoch=epoch, split="train", loss=float(out["loss"]), psnr_db=psnr(out["image"], x))
            if stop:
                break
        model.eval()
        with torch.no_grad():
            x = val.to(device).float() / 255
            out = model(x)
        val_psnr = psnr(out["image"], x)
        metrics.write(step=step, epoch=epoch, split="val", loss=float(out["loss"]), psnr_db=val_psnr)
        print(f"Epoch {epoch}/{args.epochs} - val PSNR {val_psnr:.2f} dB", flush=True)
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "args": vars(args)}
        save(args.output_dir / "last.pt", state)
        if val_psnr > best:
            best = val_psnr
            save(args.output_dir / "best.pt", state)
        if stop:
            return 143
    metrics.write(event="done", best_val_psnr_db=best)
    return 0


def memory_step(argv: list[str], batch_size: int, device: str):
    """For trainguard's memory estimate: build the model, Adam and one batch; return one training step."""
    args = parse_args(argv)
    model = Model(args).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x = torch.rand(batch_size, 3, args.image_size, args.image_size, device=device)

    def step():
        out = model(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


if __name__ == "__main__":
    sys.exit(main())
