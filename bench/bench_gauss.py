"""Figures for the Gaussian decoder's targets: renderer agreement and memory, and experiment 002's PSNR gain.

Usage:
    .venv/bin/python bench/bench_gauss.py                    # both parts; training stops after 600 s
    .venv/bin/python bench/bench_gauss.py --skip-train       # renderers only (about a minute)
    .venv/bin/python bench/bench_gauss.py --train-seconds 300 --threads 1

Part 1, renderers, at --image-size 128 with --num-gaussians 256 and a batch of 4, forward + backward
of an MSE loss, for three sets of Gaussians: those the untrained model predicts for real val
photographs (what training starts from), random ones across the model's whole range of sizes,
and the worst case where every Gaussian has the largest size the model allows (2 grid cells).
Printed: max |tile - dense| of the image and of the gradients, the number of (Gaussian, tile)
pairs, CPU and wall time per step, and peak memory.

Peak memory is measured with torch.profiler(profile_memory=True): every CPU allocation and free
made while profiling is recorded with the allocator's running total ("Total Allocated" in the
exported trace); the peak is the largest running total during one forward + backward. The
Gaussian parameters and the target are allocated before profiling starts, so the figure is what
rendering and its backward pass add on top of them.

Part 2, training: runs experiment 002 exactly as experiments/002-gauss-standard/experiment.toml
says (real photographs from --data-dir, made with prepare_images.py if missing), as a
subprocess, and prints the val PSNR of the initial model (epoch 0) and after each epoch, with the
run's wall and CPU time. The run is stopped with SIGTERM when --train-seconds is up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "trainers"))
import gauss_decoder as gd  # noqa: E402
from prepare_images import build_dataset, load_image_folder  # noqa: E402


def peak_allocated_bytes(step) -> int:
    """Peak of the CPU allocator's running total while ``step()`` runs (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def render_step(g: gd.Gaussians, target: torch.Tensor, renderer: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward + backward of an MSE loss through one renderer; returns the image and the gradients."""
    leaves = gd.Gaussians(*(t.detach().clone().requires_grad_(True) for t in g))
    image, _ = gd.render(leaves, target.shape[-2], target.shape[-1], renderer)
    F.mse_loss(image, target).backward()
    return image.detach(), [t.grad for t in leaves]


def gaussian_sets(images: torch.Tensor, num_gaussians: int, seed: int) -> dict[str, gd.Gaussians]:
    """The model's Gaussians for real images, random ones over its size range, and the largest ones."""
    torch.manual_seed(seed)
    model = gd.create_model(num_gaussians=num_gaussians, image_size=images.shape[-1])
    with torch.no_grad():
        initial = model.encode(images)
    b, k = initial.opacities.shape
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(b, k, 10, generator=gen)
    low, high = gd.LOG_SIGMA_LOW, gd.LOG_SIGMA_HIGH
    random = initial._replace(
        means=model.anchors + model.cell * torch.tanh(raw[..., 0:2]),
        scales=model.cell * torch.exp((low + high) / 2 + (high - low) / 2 * torch.tanh(raw[..., 2:4])),
        rotations=raw[..., 4] * math.pi,
        colours=torch.rand(b, k, 3, generator=gen),
        opacities=torch.sigmoid(raw[..., 8] + 2.0),
    )
    largest = random._replace(scales=torch.full_like(random.scales, model.cell * math.exp(high)))
    return {
        "untrained model on val photos": initial,
        "random, full size range": random,
        "worst case, all largest": largest,
    }


def bench_renderers(args: argparse.Namespace, data_dir: Path) -> None:
    size, k = args.image_size, args.num_gaussians
    images = load_image_folder(data_dir / "val")
    pick = torch.linspace(0, len(images) - 1, args.batch_size).round().long()  # spread over the val photographs
    target = F.interpolate(images[pick], size=(size, size), mode="bilinear", antialias=True)  # (B, 3, S, S)
    print(
        f"\n== Renderers: {size}x{size}, {k} Gaussians, batch {args.batch_size}, forward + backward, "
        f"{torch.get_num_threads()} thread(s) =="
    )
    for name, g in gaussian_sets(target, k, args.seed).items():
        cov = gd.covariance(g.scales, g.rotations)
        pairs = len(gd.tile_overlaps(g.means, cov, size, size)[0])
        tiles = math.ceil(size / gd.TILE_SIZE) ** 2
        print(
            f"\n-- {name}: sigma {g.scales.min():.1f}-{g.scales.max():.1f} px, {pairs} (Gaussian, tile) pairs = "
            f"{pairs / g.opacities.numel():.1f} of {tiles} tiles per Gaussian"
        )
        results = {}
        for renderer in ("tile", "dense", "fourier"):
            render_step(g, target, renderer)  # warm-up: first-call allocations and kernel selection
            times = []
            for _ in range(args.repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                image, grads = render_step(g, target, renderer)
                times.append((time.perf_counter() - wall, time.process_time() - cpu))
            peak = peak_allocated_bytes(lambda g=g, r=renderer: render_step(g, target, r))
            results[renderer] = (image, grads, peak)
            wall, cpu = (sorted(t[i] for t in times)[len(times) // 2] for i in (0, 1))
            print(
                f"   {renderer:8s} peak {peak / 2**20:8.1f} MiB   step wall {wall * 1e3:7.1f} ms, "
                f"CPU {cpu * 1e3:7.1f} ms (median of {args.repeats})"
            )
        tile, dense = results["tile"], results["dense"]
        image_diff = (tile[0] - dense[0]).abs().max().item()
        # Relative to each gradient's largest entry; a gradient that is zero in truth (rotation of a
        # round Gaussian) is float noise in both renderers, so its scale is floored at 1e-6.
        grad_diff = max(
            ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
            for a, b in zip(tile[1], dense[1], strict=True)
            if b is not None
        )
        ratio = tile[2] / dense[2]
        print(
            f"   tile vs dense: max |image diff| {image_diff:.2e} (target <= 1e-4: "
            f"{'met' if image_diff <= 1e-4 else 'MISSED'}), max relative gradient diff {grad_diff:.2e}"
        )
        print(
            f"   tile / dense peak memory {ratio:.3f} (target <= 0.25: {'met' if ratio <= 0.25 else 'MISSED'}); "
            f"elements per intermediate: tile {pairs * gd.TILE_SIZE**2:,}, dense {g.opacities.numel() * size**2:,}"
        )


def bench_training(args: argparse.Namespace, data_dir: Path) -> None:
    exp_dir = REPO / "experiments" / "002-gauss-standard"
    exp = tomllib.loads((exp_dir / "experiment.toml").read_text())
    spec = tomllib.loads((REPO / "trainers" / "gauss_decoder.toml").read_text())
    argv = [sys.executable, str(REPO / "trainers" / "gauss_decoder.py")]
    for name, value in exp["args"].items():
        if name == "data_dir":
            value = data_dir
        flag = spec["params"][name]["flag"]
        argv += [flag] if value is True else [] if value is False else [flag, str(value)]
    print(
        f"\n== Training: experiment 002 as bundled ({exp['args']['epochs']} epochs), stopped after "
        f"{args.train_seconds:.0f} s =="
    )
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        argv += ["--output_dir", str(Path(tmp) / "checkpoints"), "--device", "cpu"]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        print("   " + " ".join(argv[1:]))
        env = {**os.environ, "TRAINGUARD_METRICS": str(metrics)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            proc.wait(timeout=args.train_seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the trainer saves last.pt and exits 143
            proc.wait(timeout=120)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        err = proc.stderr.read()
        proc.stderr.close()
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    val = [r for r in records if r.get("split") == "val"]
    train = {r["epoch"]: r for r in records if r.get("split") == "train"}
    print(f"   exit code {proc.returncode}, wall {wall:.0f} s, CPU {cpu:.0f} s (user + system of the trainer)")
    if proc.returncode not in (0, 143):
        print("   stderr: " + err[-2000:])
    for r in val:
        extra = f", train PSNR {train[r['epoch']]['psnr_db']:.2f} dB" if r["epoch"] in train else ""
        elapsed = r["t"] - records[0]["t"]
        print(f"   epoch {r['epoch']:2d}: val PSNR {r['psnr_db']:.3f} dB (t = {elapsed:4.0f} s){extra}")
    if len(val) >= 2:
        gain = val[-1]["psnr_db"] - val[0]["psnr_db"]
        print(
            f"   held-out PSNR: initial {val[0]['psnr_db']:.3f} dB -> final {val[-1]['psnr_db']:.3f} dB "
            f"({gain:+.3f} dB) in {wall:.0f} s (target: improves within 600 s: "
            f"{'met' if gain > 0 and wall <= 600 else 'MISSED'})"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / "images" / "training_diverse",
        help="prepared photographs; built with prepare_images.py defaults into a temp folder if missing",
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--num-gaussians", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per renderer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads here and the trainer's --threads "
        "(0: torch's default); 1 is faster on a 2-core machine that other jobs share",
    )
    p.add_argument("--train-seconds", type=float, default=600.0)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-renderers", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if not (data_dir / "train").is_dir():
            data_dir = Path(tmp) / "training_diverse"
            print(f"{args.data_dir} not found; building the default photo set in {data_dir}")
            build_dataset(data_dir)
        if not args.skip_renderers:
            bench_renderers(args, data_dir)
        if not args.skip_train:
            bench_training(args, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
