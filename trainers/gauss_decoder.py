"""Train a Gaussian decoder: a small CNN reads an image and predicts K 2D Gaussians that re-render it.

Usage:
    python trainers/prepare_images.py                       # once: photographs -> images/training_diverse
    python trainers/gauss_decoder.py --experiment 2 --data_dir images/training_diverse \\
        --output_dir checkpoints/exp2 --epochs 50 --batch_size 4 --image_size 128 --lr 1e-5
    python trainers/gauss_decoder.py --experiment 3 ...     # the same plus phase retrieval (weight 0.05)
    python trainers/gauss_decoder.py --resume checkpoints/exp2/last.pt --output_dir checkpoints/exp2

Seed 000's recipes are presets picked by --experiment; any flag given explicitly wins:
    2  standard training: tile renderer, lr 1e-5, occ_weight 2.7, occ_threshold 0.3, no phase losses
    3  experiment 2 plus phase retrieval (--phase_retrieval_weight 0.05)
    4  experiment 2 with --use_phase_blending, which (as in seed 000's script) also switches to the
       fourier renderer: the combination seed 000 calls dangerous. --renderer tile keeps phase
       blending on the known-good renderer.

Each Gaussian has a position (2), scales (2), a rotation, an RGB colour, an opacity and a phase
(used only by phase blending). The encoder places one Gaussian per cell of a sqrt(K) x sqrt(K)
grid and predicts its offset from the cell centre; colours are predicted as a change from the
cell's mean input colour, so the untrained model already renders a blurred mosaic and training
sharpens it. Blending is an order-independent weighted average (the same function for every
renderer, so they can be compared pixel by pixel):
    S_w(p) = sum_i w_i(p),  S_c(p) = sum_i w_i(p) c_i,  w_i(p) = opacity_i * G_i(p)
    alpha(p) = 1 - exp(-S_w(p))                   (opacity accumulates like optical depth)
    image(p) = S_c(p) / S_w(p) * alpha(p) + background * (1 - alpha(p))
G_i is a Gaussian cut off at 3 sigma (shifted so it reaches exactly 0 there, keeping it
continuous) for the tile and dense renderers; the fourier renderer cannot cut off, see below.

Renderers (--renderer):
    tile     the image is split into 16x16 tiles; each tile evaluates only the Gaussians whose
             3-sigma bounding box overlaps it. The (Gaussian, tile) pairs are listed with tensor
             ops, grouped by tile, and summed per tile with segment sums, so memory grows with
             the number of overlaps, not with pixels x Gaussians. Known good.
    dense    every pixel against every Gaussian: B x K x H x W floats per intermediate. Same
             output as tile (to float rounding); the memory hog, kept as the reference.
    fourier  each Gaussian's analytic Fourier transform is summed on the frequency grid and one
             inverse FFT makes the image. Holds B x K x H x (W/2+1) spectra (as heavy as dense),
             and the FFT is periodic: Gaussians at one edge bleed into the opposite edge, and
             Gaussians narrower than about a pixel ring (their spectrum is cut at Nyquist).
             These are seed 000's "FFT interference issues"; the renderer is here to show them.

--use_phase_blending: each Gaussian's colour is added as a complex amplitude c_i * exp(i phi_i)
and the magnitude of the sum replaces S_c. In phase, it is the normal blend; out of phase,
overlapping Gaussians cancel, which can draw dark edges no positive blend can, but makes the
image a non-monotone, oscillating function of the parameters (interference).

Losses: reconstruction (--recon_loss mse or l1); occupancy, mean(relu(occ_threshold - alpha)) /
occ_threshold, i.e. a soft fraction of pixels less covered than the threshold; phase retrieval,
the mean |(|FFT(render)| - |FFT(target)|)| with an orthonormal FFT (the Fourier-magnitude loss of
phase retrieval, on the same scale as a pixel L1).

Data: --data_dir must hold train/ and val/ folders of PNGs as written by prepare_images.py; val
photographs are disjoint from train ones, so val PSNR is measured on unseen images.

Outputs, in --output_dir (default $TRAINGUARD_RUN_DIR/checkpoints, else ./checkpoints):
    best.pt   the checkpoint with the best val PSNR so far
    last.pt   the latest checkpoint, written every epoch and on SIGTERM/SIGINT

Under trainguard, $TRAINGUARD_METRICS receives a start event, a val record for the initial model
(epoch 0), then per epoch one train record (loss, recon_loss, occ_loss, phase_loss, psnr_db,
grad_norm, lr, sps) and one val record (psnr_db, recon_loss, fourier_mag_l1, occupied_frac), checkpoint events
and a done event. SIGTERM or SIGINT stops after the current batch: last.pt is written, then the
process exits with 143 or 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

if str(Path(__file__).resolve().parent) not in sys.path:  # lets tests import this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainkit import (  # noqa: E402
    MetricsStream,
    StopFlag,
    finish,
    load_checkpoint,
    pick_device,
    psnr_db,
    restore_rng,
    rng_state,
    run_trainer,
    save_checkpoint,
    seed_everything,
)

RENDERERS = ("tile", "dense", "fourier")
TILE_SIZE = 16
CUTOFF_SIGMA = 3.0  # Gaussians end at 3 sigma: exp(-4.5) = 1.1% of the peak is dropped
# sigma = cell * exp(mid + half * tanh(raw)): from 0.15 to 2 cells. The upper bound keeps a
# Gaussian's 3-sigma box within about 7x7 tiles, which bounds the tile renderer's memory.
LOG_SIGMA_LOW, LOG_SIGMA_HIGH = math.log(0.15), math.log(2.0)
PARAMS_PER_GAUSSIAN = 10  # offset (2), log-scale (2), rotation, colour (3), opacity, phase
MODEL_KEYS = ("num_gaussians", "image_size", "width")
RESUME_KEYS = ("epoch", "step", "model_state_dict", "optimizer_state_dict", "best_psnr_db", "best_epoch", "rng")
PRESETS: dict[int, dict] = {
    2: {
        "renderer": "tile",
        "lr": 1e-5,
        "occ_weight": 2.7,
        "occ_threshold": 0.3,
        "phase_retrieval_weight": 0.0,
        "use_phase_blending": False,
    },
}
PRESETS[3] = {**PRESETS[2], "phase_retrieval_weight": 0.05}
PRESETS[4] = {**PRESETS[2], "use_phase_blending": True, "renderer": "fourier"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line and fills every unset preset flag from --experiment."""
    default_dir = (
        Path(os.environ["TRAINGUARD_RUN_DIR"]) / "checkpoints"
        if os.environ.get("TRAINGUARD_RUN_DIR")
        else Path("checkpoints")
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arg = p.add_argument
    arg(
        "--experiment",
        type=int,
        choices=sorted(PRESETS),
        default=2,
        help="seed 000 recipe: 2 standard, 3 + phase retrieval, 4 phase blending (fourier renderer); "
        "explicit flags override its values",
    )
    # data
    arg(
        "--data_dir",
        type=Path,
        default=Path("images/training_diverse"),
        help="folder with train/ and val/ PNGs written by trainers/prepare_images.py",
    )
    arg("--image_size", type=int, default=128, help="side of the square images; other sizes on disk are resized")
    # model and renderer
    arg("--num_gaussians", type=int, default=256, help="Gaussians per image (placed on a sqrt(K) x sqrt(K) grid)")
    arg("--width", type=int, default=64, help="channels of the encoder's middle stage")
    arg("--renderer", choices=RENDERERS, default=None, help="tile (known good), dense or fourier (preset: tile)")
    arg(
        "--use_phase_blending",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="blend colours as complex amplitudes with a learned phase per Gaussian (preset: off; on for 4)",
    )
    # losses and optimisation
    arg("--lr", type=float, default=None, help="Adam learning rate (preset: 1e-5; seed 000 found 1e-4 unstable)")
    arg("--recon_loss", choices=("mse", "l1"), default="mse", help="pixel reconstruction loss")
    arg("--occ_weight", type=float, default=None, help="weight of the occupancy loss (preset: 2.7)")
    arg(
        "--occ_threshold",
        type=float,
        default=None,
        help="accumulated opacity below which a pixel counts as uncovered (preset: 0.3)",
    )
    arg(
        "--phase_retrieval_weight",
        type=float,
        default=None,
        help="weight of the Fourier-magnitude loss (preset: 0 for 2 and 4, 0.05 for 3)",
    )
    arg("--grad_clip", type=float, default=1.0, help="clip the global gradient norm to this (0 disables)")
    arg("--epochs", type=int, default=50, help="passes over the training images")
    arg("--batch_size", type=int, default=4, help="images per optimizer step")
    # run
    arg("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; auto prefers cuda, then mps")
    arg(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default, one per core); 1 is faster on a CPU that other jobs share",
    )
    arg("--seed", type=int, default=0, help="seed for the initial weights, batch order and flips")
    arg("--output_dir", type=Path, default=default_dir, help="where best.pt and last.pt go")
    arg("--resume", type=Path, default=None, help="checkpoint (last.pt) to continue from, at its next epoch")
    args = p.parse_args(argv)
    for name, value in PRESETS[args.experiment].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("num_gaussians", "image_size", "width", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.image_size < TILE_SIZE:
        p.error(f"--image_size must be at least {TILE_SIZE}")
    if args.lr <= 0 or args.occ_weight < 0 or args.phase_retrieval_weight < 0:
        p.error("--lr must be positive; --occ_weight and --phase_retrieval_weight non-negative")
    if not 0.0 < args.occ_threshold <= 1.0:
        p.error("--occ_threshold must be in (0, 1]")
    return args


# ---------------------------------------------------------------------------- data


def load_split(data_dir: Path, split: str, image_size: int) -> torch.Tensor:
    """Images of one split as uint8 (N, 3, S, S), resized when the folder holds another size."""
    from prepare_images import load_image_folder

    folder = Path(data_dir) / split
    if not folder.is_dir() or not any(folder.glob("*.png")):
        script = Path(__file__).resolve().parent / "prepare_images.py"
        raise FileNotFoundError(
            f"no training images in {folder}: expected {data_dir}/train and {data_dir}/val with PNG files. "
            f"Create them with: python {script} --output-dir {data_dir}"
        )
    images = load_image_folder(folder, dtype=torch.uint8)  # (N, 3, H, W); uint8 is 4x smaller than float
    if images.shape[-2:] != (image_size, image_size):
        resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images


# ---------------------------------------------------------------------------- rendering


class Gaussians(NamedTuple):
    """K 2D Gaussians per image, in pixel units; pixel (row i, column j) has its centre at (x=j, y=i)."""

    means: torch.Tensor  # (B, K, 2) x, y
    scales: torch.Tensor  # (B, K, 2) sigma along the Gaussian's own axes, pixels
    rotations: torch.Tensor  # (B, K) radians
    colours: torch.Tensor  # (B, K, 3) in [0, 1]
    opacities: torch.Tensor  # (B, K) in [0, 1]
    phases: torch.Tensor  # (B, K) radians, used by phase blending only
    background: torch.Tensor  # (B, 3) in [0, 1]


def covariance(scales: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """R diag(sigma^2) R^T as (..., 3) = (xx, xy, yy) from scales (..., 2) and rotations (...)."""
    c, s = torch.cos(rotations), torch.sin(rotations)
    vx, vy = scales[..., 0] ** 2, scales[..., 1] ** 2
    return torch.stack((vx * c * c + vy * s * s, (vx - vy) * s * c, vx * s * s + vy * c * c), dim=-1)


def conic(cov: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Inverse covariance (a, b, c) with d^2 = a dx^2 + 2 b dx dy + c dy^2; det is sx^2 sy^2 exactly."""
    det = (scales[..., 0] * scales[..., 1]) ** 2  # more accurate than xx*yy - xy^2 for thin Gaussians
    return torch.stack((cov[..., 2], -cov[..., 1], cov[..., 0]), dim=-1) / det[..., None]


def gaussian_weights(
    dx: torch.Tensor, dy: torch.Tensor, inv: torch.Tensor, opacity: torch.Tensor, cutoff: float | None
) -> torch.Tensor:
    """opacity * G at column offsets dx (..., 1, W) and row offsets dy (..., H, 1); returns (..., H, W).

    inv (..., 3) and opacity (...) hold one Gaussian per leading index. The tile and dense renderers
    both call this, so they evaluate the very same function. Every factor, the opacity included
    (as a log), is folded into the small (..., 1, W) and (..., H, 1) terms first: only five ops touch
    the big (..., H, W) tensors, and autograd keeps just two of them (the exp and the result).
    """
    a, b, c = inv[..., 0, None, None], inv[..., 1, None, None], inv[..., 2, None, None]
    floor = 0.0 if cutoff is None else math.exp(-0.5 * cutoff**2)
    # The cut-off kernel is shifted down by `floor` so it reaches exactly 0 at the cutoff (no seam),
    # and rescaled by 1/(1 - floor) so its peak stays at the opacity.
    scale = opacity[..., None, None].clamp_min(1e-30) / (1.0 - floor)  # (..., 1, 1)
    x_term = -0.5 * a * dx * dx + torch.log(scale)  # (..., 1, W)
    exponent = torch.addcmul(x_term, -b * dx, dy) + (-0.5 * c * dy * dy)  # log(scale) - d^2/2, (..., H, W)
    g = torch.exp(exponent)  # scale * exp(-d^2/2)
    return g if cutoff is None else F.relu(g - floor * scale)


def accumulate_dense(
    means: torch.Tensor,
    cov: torch.Tensor,
    inv: torch.Tensor,
    opacity: torch.Tensor,
    feats: torch.Tensor,
    height: int,
    width: int,
    cutoff: float | None = CUTOFF_SIGMA,
) -> torch.Tensor:
    """sum_i w_i(p) feats_i for every pixel p, evaluating every Gaussian at every pixel.

    Args:
        means (B, K, 2), cov (B, K, 3), inv (B, K, 3), opacity (B, K), feats (B, K, F).
        cutoff: Mahalanobis radius where the kernel ends; None for the untruncated Gaussian.

    Returns:
        (B, F, H, W).
    """
    xs = torch.arange(width, device=means.device, dtype=means.dtype)
    ys = torch.arange(height, device=means.device, dtype=means.dtype)
    dx = xs.view(1, 1, 1, width) - means[..., 0, None, None]  # (B, K, 1, W)
    dy = ys.view(1, 1, height, 1) - means[..., 1, None, None]  # (B, K, H, 1)
    w = gaussian_weights(dx, dy, inv, opacity, cutoff)  # (B, K, H, W): the memory hog
    return torch.einsum("bkhw,bkf->bfhw", w, feats)  # (B, F, H, W)


def tile_overlaps(
    means: torch.Tensor,
    cov: torch.Tensor,
    height: int,
    width: int,
    tile: int = TILE_SIZE,
    cutoff: float = CUTOFF_SIGMA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lists every (Gaussian, tile) pair whose 3-sigma bounding box touches the tile, grouped by tile.

    The box half-widths cutoff*sqrt(xx), cutoff*sqrt(yy) are exactly the extents of the ellipse
    d^2 = cutoff^2, so no pixel with a non-zero weight is missed.

    Returns:
        gid (M,) flat Gaussian index b*K + k, tile_x (M,), tile_y (M,) and the flat tile index
        b * tiles_per_image + tile_y * tiles_x + tile_x (M,), all sorted by that tile index;
        int64, no gradient.
    """
    with torch.no_grad():
        b, k = means.shape[:2]
        tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
        mx, my = means[..., 0].reshape(-1), means[..., 1].reshape(-1)  # (B*K,)
        rx, ry = cutoff * cov[..., 0].reshape(-1).sqrt(), cutoff * cov[..., 2].reshape(-1).sqrt()
        visible = (mx + rx >= 0) & (mx - rx <= width - 1) & (my + ry >= 0) & (my - ry <= height - 1)
        x0 = torch.floor((mx - rx) / tile).clamp(0, tiles_x - 1).long()
        x1 = torch.floor((mx + rx) / tile).clamp(0, tiles_x - 1).long()
        y0 = torch.floor((my - ry) / tile).clamp(0, tiles_y - 1).long()
        y1 = torch.floor((my + ry) / tile).clamp(0, tiles_y - 1).long()
        span_x = x1 - x0 + 1
        count = span_x * (y1 - y0 + 1) * visible  # (B*K,) tiles each Gaussian touches
        # Expand each Gaussian into its rectangle of tiles: pair j belongs to Gaussian gid[j] and is
        # the local-th tile of its rectangle, read row by row.
        gid = torch.repeat_interleave(torch.arange(b * k, device=means.device), count)  # (M,)
        first = torch.cumsum(count, 0) - count  # (B*K,) index of each Gaussian's first pair
        local = torch.arange(gid.numel(), device=means.device) - first[gid]  # (M,)
        tile_x = x0[gid] + local % span_x[gid]
        tile_y = y0[gid] + local // span_x[gid]
        tile_id = (gid // k) * (tiles_x * tiles_y) + tile_y * tiles_x + tile_x  # (M,)
        # Grouped by tile, a per-tile sum is a segment sum: many times faster than index_add on CPU.
        order = torch.argsort(tile_id, stable=True)
    return gid[order], tile_x[order], tile_y[order], tile_id[order]


class TileSum(torch.autograd.Function):
    """out[t, f, q] = sum of feats[p, f] * w[p, q] over the pairs p of tile t (pairs grouped by tile).

    Autograd through a plain per-channel version would hold an (M, T*T) gradient per feature
    channel at once; this backward gathers each channel's gradient in turn and accumulates into
    one (M, T*T) buffer, so the pass stays at a few (M, T*T) tensors.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, feats: torch.Tensor, tile_index: torch.Tensor, n_tiles: int) -> torch.Tensor:
        # w (M, Q), feats (M, F), tile_index (M,) sorted -> (n_tiles, F, Q)
        ctx.save_for_backward(w, feats, tile_index)
        if w.device.type in ("cpu", "cuda"):
            lengths = torch.bincount(tile_index, minlength=n_tiles)  # (n_tiles,)
            channels = [
                torch.segment_reduce(w * feats[:, f, None], "sum", lengths=lengths, axis=0, unsafe=True)
                for f in range(feats.shape[1])
            ]
        else:  # segment_reduce has no kernel on other backends (e.g. mps)
            channels = [
                w.new_zeros(n_tiles, w.shape[1]).index_add(0, tile_index, w * feats[:, f, None])
                for f in range(feats.shape[1])
            ]
        return torch.stack(channels, dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (n_tiles, F, Q)
        w, feats, tile_index = ctx.saved_tensors
        grad_w = torch.zeros_like(w) if ctx.needs_input_grad[0] else None  # (M, Q)
        grad_feats = torch.empty_like(feats) if ctx.needs_input_grad[1] else None  # (M, F)
        for f in range(feats.shape[1]):
            per_pair = grad[:, f][tile_index]  # (M, Q): each pair sees its tile's gradient
            if grad_w is not None:
                grad_w.addcmul_(per_pair, feats[:, f, None])
            if grad_feats is not None:  # a batched dot product, without an (M, Q) temporary
                grad_feats[:, f] = torch.bmm(per_pair[:, None, :], w[:, :, None]).view(-1)
        return grad_w, grad_feats, None, None


def accumulate_tile(
    means: torch.Tensor,
    cov: torch.Tensor,
    inv: torch.Tensor,
    opacity: torch.Tensor,
    feats: torch.Tensor,
    height: int,
    width: int,
    tile: int = TILE_SIZE,
    cutoff: float = CUTOFF_SIGMA,
) -> torch.Tensor:
    """The same sums as accumulate_dense, evaluating each Gaussian only on the tiles it overlaps.

    Every intermediate is (M, tile, tile) for M overlapping (Gaussian, tile) pairs, and the sums
    over each tile's pairs are segment sums (TileSum). The blend is order-independent, so no
    depth sort is needed.

    Returns:
        (B, F, H, W).
    """
    b, k, nf = feats.shape
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    gid, tile_x, tile_y, tile_index = tile_overlaps(means, cov, height, width, tile, cutoff)  # (M,) each
    offsets = torch.arange(tile, device=means.device, dtype=means.dtype)  # (T,)
    flat_means = means.reshape(b * k, 2)[gid]  # (M, 2)
    dx = (tile_x.to(means.dtype)[:, None] * tile + offsets - flat_means[:, 0, None])[:, None, :]  # (M, 1, T)
    dy = (tile_y.to(means.dtype)[:, None] * tile + offsets - flat_means[:, 1, None])[:, :, None]  # (M, T, 1)
    w = gaussian_weights(dx, dy, inv.reshape(b * k, 3)[gid], opacity.reshape(b * k)[gid], cutoff)  # (M, T, T)
    out = TileSum.apply(
        w.reshape(-1, tile * tile), feats.reshape(b * k, nf)[gid], tile_index, b * tiles_x * tiles_y
    )  # (B*tiles, F, T*T)
    out = out.view(b, tiles_y, tiles_x, nf, tile, tile).permute(0, 3, 1, 4, 2, 5)  # (B, F, ty, T, tx, T)
    return out.reshape(b, nf, tiles_y * tile, tiles_x * tile)[:, :, :height, :width]  # (B, F, H, W)


def accumulate_fourier(
    means: torch.Tensor,
    cov: torch.Tensor,
    inv: torch.Tensor,
    opacity: torch.Tensor,
    feats: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """The same sums with untruncated Gaussians, built in the frequency domain.

    A Gaussian opacity * exp(-d^2/2) has the Fourier transform
    opacity * 2 pi sqrt(det cov) * exp(-2 pi^2 f^T cov f) * exp(-2 pi i f . mean); sampled at the
    FFT's frequencies and inverted, it gives the Gaussian sampled on the pixel grid, wrapped
    around the image borders (the FFT is periodic). ``inv`` is unused (kept for one signature).

    Returns:
        (B, F, H, W).
    """
    fy = torch.fft.fftfreq(height, device=means.device, dtype=means.dtype).view(1, 1, height, 1)
    fx = torch.fft.rfftfreq(width, device=means.device, dtype=means.dtype).view(1, 1, 1, width // 2 + 1)
    xx, xy, yy = cov[..., 0, None, None], cov[..., 1, None, None], cov[..., 2, None, None]
    quad = xx * fx * fx + yy * fy * fy + 2 * xy * fx * fy  # (B, K, H, W/2+1)
    det = (xx * yy - xy * xy).clamp_min(1e-12)
    envelope = (2 * math.pi) * det.sqrt() * opacity[..., None, None] * torch.exp(-2 * math.pi**2 * quad)
    shift = -2 * math.pi * (fx * means[..., 0, None, None] + fy * means[..., 1, None, None])  # (B, K, H, W/2+1)
    real = torch.einsum("bkhw,bkf->bfhw", envelope * torch.cos(shift), feats)  # (B, F, H, W/2+1)
    imag = torch.einsum("bkhw,bkf->bfhw", envelope * torch.sin(shift), feats)
    return torch.fft.irfft2(torch.complex(real, imag), s=(height, width))  # (B, F, H, W)


def compose(acc: torch.Tensor, background: torch.Tensor, phase_blending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Turns the accumulated sums into (image (B, 3, H, W), alpha (B, 1, H, W)).

    acc holds S_c (3 channels; 6 with phase blending: real then imaginary parts) and S_w last.
    image = S_c * (1 - exp(-S_w)) / S_w + background * exp(-S_w), written with the gain
    (1 - e^-S)/S, which tends to 1 as S -> 0, so uncovered pixels never divide by zero.
    """
    weight = acc[:, -1:].clamp_min(0)  # (B, 1, H, W); only the fourier renderer can ring below 0
    if phase_blending:
        colour = torch.sqrt(acc[:, 0:3] ** 2 + acc[:, 3:6] ** 2 + 1e-12)  # |sum w c e^{i phi}|, (B, 3, H, W)
    else:
        colour = acc[:, 0:3]  # (B, 3, H, W)
    safe = weight.clamp_min(1e-6)
    gain = -torch.expm1(-safe) / safe
    transmittance = torch.exp(-weight)  # (B, 1, H, W)
    image = colour * gain + background[:, :, None, None] * transmittance
    return image, 1.0 - transmittance


def render(
    g: Gaussians, height: int, width: int, renderer: str = "tile", phase_blending: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders Gaussians with one of the three renderers; returns image (B, 3, H, W), alpha (B, 1, H, W)."""
    cov = covariance(g.scales, g.rotations)  # (B, K, 3)
    inv = conic(cov, g.scales)  # (B, K, 3)
    if phase_blending:
        colour = torch.cat((g.colours * torch.cos(g.phases)[..., None], g.colours * torch.sin(g.phases)[..., None]), -1)
    else:
        colour = g.colours
    feats = torch.cat((colour, torch.ones_like(g.opacities)[..., None]), dim=-1)  # (B, K, F): colour sums, then S_w
    if renderer == "tile":
        acc = accumulate_tile(g.means, cov, inv, g.opacities, feats, height, width)
    elif renderer == "dense":
        acc = accumulate_dense(g.means, cov, inv, g.opacities, feats, height, width)
    elif renderer == "fourier":
        acc = accumulate_fourier(g.means, cov, inv, g.opacities, feats, height, width)
    else:
        raise ValueError(f"unknown renderer {renderer!r}; choose one of {RENDERERS}")
    return compose(acc, g.background, phase_blending)


# ---------------------------------------------------------------------------- model


class GaussDecoder(nn.Module):
    """Image (B, 3, S, S) in [0, 1] -> K Gaussians -> rendered image (B, 3, S, S)."""

    def __init__(
        self,
        num_gaussians: int = 256,
        image_size: int = 128,
        width: int = 64,
        renderer: str = "tile",
        phase_blending: bool = False,
    ):
        super().__init__()
        self.image_size, self.renderer, self.phase_blending = image_size, renderer, phase_blending
        self.grid = math.ceil(math.sqrt(num_gaussians))
        self.cell = image_size / self.grid  # pixels per grid cell
        c1, c2, c3 = max(width // 2, 1), width, 2 * width
        self.trunk = nn.Sequential(  # three stride-2 stages: S -> S/8 (16x16 at 128, one cell per Gaussian)
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c3, c3, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(c3, c3, 3, padding=1),
            nn.GELU(),
        )
        self.head = nn.Conv2d(c3, PARAMS_PER_GAUSSIAN, 1)
        self.background_head = nn.Linear(c3, 3)
        # Zero-initialised heads: the untrained model renders the mosaic of cell mean colours,
        # a sane start that the gradients refine, instead of random blobs.
        for layer in (self.head, self.background_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # K of the grid's cells, spread evenly when K is not a perfect square.
        cells = torch.linspace(0, self.grid**2 - 1, num_gaussians).round().long()  # (K,)
        centres = torch.stack(((cells % self.grid).float(), (cells // self.grid).float()), -1)  # (K, 2) col, row
        self.register_buffer("cells", cells, persistent=False)
        self.register_buffer("anchors", (centres + 0.5) * self.cell - 0.5, persistent=False)  # (K, 2) pixels
        # Equal phases are a saddle of phase blending (d|sum|/d phi = 0 there), so start them spread.
        self.register_buffer("phase0", 0.5 * torch.randn(num_gaussians))

    def _per_gaussian(self, grid_map: torch.Tensor) -> torch.Tensor:
        """(B, C, S', S') -> (B, K, C) for the K chosen grid cells."""
        pooled = F.adaptive_avg_pool2d(grid_map, self.grid)  # (B, C, g, g)
        return pooled.flatten(2).transpose(1, 2)[:, self.cells]  # (B, K, C)

    def encode(self, x: torch.Tensor) -> Gaussians:
        """Predicts the Gaussians of images x (B, 3, S, S) in [0, 1]."""
        features = self.trunk(x * 2 - 1)  # (B, 2w, S/8, S/8)
        raw = self._per_gaussian(self.head(features)).float()  # (B, K, 10); float32 even under autocast
        base = self._per_gaussian(x).clamp(0.01, 0.99)  # (B, K, 3) mean input colour of each cell
        means = self.anchors + self.cell * torch.tanh(raw[..., 0:2])  # (B, K, 2) within one cell of the anchor
        mid, half = (LOG_SIGMA_LOW + LOG_SIGMA_HIGH) / 2, (LOG_SIGMA_HIGH - LOG_SIGMA_LOW) / 2
        scales = self.cell * torch.exp(mid + half * torch.tanh(raw[..., 2:4]))  # (B, K, 2)
        colours = torch.sigmoid(torch.logit(base) + raw[..., 5:8])  # (B, K, 3)
        opacities = torch.sigmoid(raw[..., 8] + 2.0)  # (B, K); 0.88 at the start
        phases = self.phase0 + raw[..., 9]  # (B, K)
        mean_colour = x.mean(dim=(2, 3)).clamp(0.01, 0.99)  # (B, 3)
        background = torch.sigmoid(torch.logit(mean_colour) + self.background_head(features.mean(dim=(2, 3))).float())
        return Gaussians(means, scales, raw[..., 4], colours, opacities, phases, background)

    def render(self, g: Gaussians) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, 3, S, S) and alpha (B, 1, S, S) of Gaussians, in float32."""
        return render(g, self.image_size, self.image_size, self.renderer, self.phase_blending)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, 3, S, S) of x (B, 3, S, S)."""
        return self.render(self.encode(x))[0]


def create_model(
    num_gaussians: int = 256,
    image_size: int = 128,
    width: int = 64,
    renderer: str = "tile",
    phase_blending: bool = False,
) -> GaussDecoder:
    """Builds the decoder from a checkpoint's ``config`` (MODEL_KEYS) and a renderer choice."""
    return GaussDecoder(num_gaussians, image_size, width, renderer, phase_blending)


# ---------------------------------------------------------------------------- losses and evaluation


def fourier_magnitude_loss(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Phase retrieval's loss: mean | |FFT(image)| - |FFT(target)| | with an orthonormal 2D FFT."""
    return (torch.fft.rfft2(image, norm="ortho").abs() - torch.fft.rfft2(target, norm="ortho").abs()).abs().mean()


def losses(model: GaussDecoder, x: torch.Tensor, args: argparse.Namespace, autocast) -> dict[str, torch.Tensor]:
    """Every loss term for images x (B, 3, S, S), plus the render, for one batch."""
    with autocast:
        g = model.encode(x)
    image, alpha = model.render(g)  # float32: the renderer's exp() needs the precision
    recon = F.mse_loss(image, x) if args.recon_loss == "mse" else F.l1_loss(image, x)
    occ = F.relu(args.occ_threshold - alpha).mean() / args.occ_threshold
    phase = fourier_magnitude_loss(image, x) if args.phase_retrieval_weight > 0 else torch.zeros((), device=x.device)
    total = recon + args.occ_weight * occ + args.phase_retrieval_weight * phase
    return {"loss": total, "recon_loss": recon, "occ_loss": occ, "phase_loss": phase, "image": image, "alpha": alpha}


def train_step(
    model: GaussDecoder,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    args: argparse.Namespace,
    autocast,
    skip_nonfinite: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on images x (B, 3, S, S); a step whose gradient is not finite is skipped.

    Args:
        skip_nonfinite: Read the gradient norm and skip the update when it is not finite. The
            memory probe turns it off: fake tensors hold no number to read, and it costs no memory.

    Returns:
        The loss parts (see losses) and the gradient norm before clipping (0-d).
    """
    parts = losses(model, x, args, autocast)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    clip = args.grad_clip if args.grad_clip > 0 else math.inf
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
    if not skip_nonfinite or torch.isfinite(grad_norm):
        optimizer.step()
    return parts, grad_norm


def memory_step(argv: list[str], batch_size: int, device: str = "cpu"):
    """One training step as the loop runs it, for pre-flight's memory estimate (trainers/memprobe.py).

    The images stay on the CPU and only each batch moves, so the device holds the model, Adam
    and one batch. The tile renderer's size depends on where the Gaussians land, so the probe
    traces it with real tensors on the CPU (random images, untrained model).

    Returns:
        A closure running one optimizer step with the configured renderer and losses.
    """
    args = parse_args(argv)
    model = create_model(*(getattr(args, k) for k in MODEL_KEYS), args.renderer, args.use_phase_blending)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(0)  # random but reproducible, and leaves the global RNG alone
    x = torch.rand(batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)  # (B, 3, S, S)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    return lambda: train_step(model, optimizer, x, args, autocast, skip_nonfinite=False)


@torch.no_grad()
def evaluate(
    model: GaussDecoder, images: torch.Tensor, args: argparse.Namespace, autocast, batch_size: int = 16
) -> dict[str, float]:
    """Mean per-image PSNR (dB), reconstruction loss, Fourier-magnitude error and covered fraction.

    The Fourier-magnitude error is computed whatever --phase_retrieval_weight is, so runs with and
    without the phase retrieval loss can be compared on it.
    """
    model.eval()
    psnr_sum = recon_sum = fourier_sum = occupied_sum = 0.0
    device = next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float() / 255.0  # (b, 3, S, S)
        parts = losses(model, x, args, autocast)
        psnr_sum += psnr_db(parts["image"], x).sum().item()
        recon_sum += parts["recon_loss"].item() * len(x)
        fourier_sum += fourier_magnitude_loss(parts["image"], x).item() * len(x)
        occupied_sum += (parts["alpha"] >= args.occ_threshold).float().mean().item() * len(x)
    model.train()
    n = len(images)
    return {
        "psnr_db": psnr_sum / n,
        "recon_loss": recon_sum / n,
        "fourier_mag_l1": fourier_sum / n,
        "occupied_frac": occupied_sum / n,
    }


# ---------------------------------------------------------------------------- training


def train(args: argparse.Namespace, metrics: MetricsStream, stop: StopFlag) -> int:
    """Runs the whole training; returns the process exit code (0, or 128+signal when stopped)."""
    # 1. Resolve everything the run depends on, and announce it before the slow parts.
    device = pick_device(args.device)
    if args.threads > 0:  # on a busy CPU, threads that wait for each other at every op cost more than they give
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_config = {k: getattr(args, k) for k in MODEL_KEYS}
    checkpoint = None
    if args.resume:
        flags = "--num_gaussians, --image_size and --width"
        checkpoint = load_checkpoint(args.resume, "gauss_decoder.py", RESUME_KEYS, model_config, flags)
    metrics.event("start", config={**vars(args), "output_dir": str(out_dir), "resolved_device": device})
    # bf16 autocast speeds up the encoder on GPUs; the renderer always runs in float32.
    use_amp = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()

    # 2. Data: a few thousand small images fit in memory as uint8; batches are index lookups.
    t0 = time.time()
    train_images = load_split(args.data_dir, "train", args.image_size)  # (N, 3, S, S) uint8
    val_images = load_split(args.data_dir, "val", args.image_size)  # (M, 3, S, S) uint8
    n_train = len(train_images)
    print(
        f"Data: {n_train} train / {len(val_images)} val images of {args.image_size}px from {args.data_dir} "
        f"in {time.time() - t0:.1f}s, device {device}",
        flush=True,
    )

    # 3. Model and optimizer (and the state to continue from).
    model = create_model(**model_config, renderer=args.renderer, phase_blending=args.use_phase_blending).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_epoch, step, best_psnr, best_epoch = 1, 0, -math.inf, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        for group in optimizer.param_groups:  # an explicit --lr on resume wins over the saved one
            group["lr"] = args.lr
        start_epoch, step = checkpoint["epoch"] + 1, checkpoint["step"]
        best_psnr, best_epoch = checkpoint["best_psnr_db"], checkpoint["best_epoch"]
        restore_rng(checkpoint["rng"], device)
        print(f"Resumed from {args.resume} at epoch {start_epoch} (step {step}, best {best_psnr:.2f} dB)", flush=True)
    print(
        f"Model: {sum(p.numel() for p in model.parameters()):,} parameters, {args.num_gaussians} Gaussians, "
        f"renderer {args.renderer}, phase blending {'on' if args.use_phase_blending else 'off'}, "
        f"experiment {args.experiment}",
        flush=True,
    )

    epochs_done, val = start_epoch - 1, None

    def save(kind: str, epoch: int) -> None:
        save_checkpoint(
            metrics,
            {
                "epoch": epoch,
                "step": step,
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "config": model_config,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "val_psnr_db": val["psnr_db"] if val else None,
                "best_psnr_db": best_psnr,
                "best_epoch": best_epoch,
                "rng": rng_state(device),
            },
            out_dir / f"{kind}.pt",
            kind=kind,
            step=step,
            epoch=epoch,
        )

    # 4. The initial model's val PSNR: the baseline every later epoch is compared against.
    if checkpoint is None:
        val = evaluate(model, val_images, args, autocast)
        metrics.log(step, "val", epoch=0, **val)
        print(f"Epoch 0 (initial model) - Val PSNR: {val['psnr_db']:.2f} dB", flush=True)

    for epoch in range(start_epoch, args.epochs + 1):
        # 4a. One pass over the training images in a fresh order, each randomly mirrored.
        t_epoch = time.time()
        model.train()
        order = torch.randperm(n_train)
        sums = dict.fromkeys(("loss", "recon_loss", "occ_loss", "phase_loss", "psnr_db", "grad_norm"), 0.0)
        seen = batches = skipped = 0
        for i in range(0, n_train, args.batch_size):
            if stop.requested:
                break
            idx = order[i : i + args.batch_size]
            x = train_images[idx].to(device).float() / 255.0  # (B, 3, S, S)
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
            parts, grad_norm = train_step(model, optimizer, x, args, autocast)
            if not torch.isfinite(grad_norm):  # a NaN step would poison the weights for good; it was skipped
                skipped += 1
                continue
            step += 1
            batches += 1
            seen += len(idx)
            for key in ("loss", "recon_loss", "occ_loss", "phase_loss"):
                sums[key] += parts[key].item() * len(idx)
            sums["psnr_db"] += psnr_db(parts["image"].detach(), x).sum().item()
            sums["grad_norm"] += grad_norm.item()
        if stop.requested:
            break
        if seen == 0:
            raise FloatingPointError(f"every step of epoch {epoch} had a non-finite gradient; lower --lr")
        images_per_s = seen / (time.time() - t_epoch)
        train_stats = {k: v / (batches if k == "grad_norm" else seen) for k, v in sums.items()}

        # 4b. Validate, report, checkpoint.
        val = evaluate(model, val_images, args, autocast)
        epochs_done = epoch
        improved = val["psnr_db"] > best_psnr
        if improved:
            best_psnr, best_epoch = val["psnr_db"], epoch
        ts = train_stats
        print(
            f"Epoch {epoch}/{args.epochs} - Train Loss: {ts['loss']:.5f} (recon {ts['recon_loss']:.5f}, "
            f"occ {ts['occ_loss']:.5f}, phase {ts['phase_loss']:.5f}), "
            f"Train PSNR: {ts['psnr_db']:.2f} dB, Val PSNR: {val['psnr_db']:.2f} dB"
            + (f", skipped {skipped} non-finite steps" if skipped else "")
            + (" *" if improved else ""),
            flush=True,
        )
        metrics.log(step, "train", epoch=epoch, **train_stats, lr=args.lr, sps=images_per_s)
        metrics.log(step, "val", epoch=epoch, **val)
        if improved:
            save("best", epoch)
        save("last", epoch)

    # 5. A stop request lands here mid-epoch: keep the weights, then say why we are exiting.
    return finish(
        metrics,
        stop,
        stopped=stop.requested,
        save_last=lambda: save("last", epochs_done),
        last_path=out_dir / "last.pt",
        best_name="best_val_psnr_db",
        best_value=best_psnr,
        best_epoch=best_epoch,
        best_line="Best val PSNR {value:.2f} dB at epoch {epoch}",
        epochs=epochs_done,
        steps=step,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parses flags and runs training under the trainer contract (trainkit.run_trainer)."""
    return run_trainer(train, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
