"""Trainer throughput on a GPU with and without AMP (bfloat16 autocast), from the trainers' own metrics.

Usage:
    python bench/bench_amp.py                   # on a CUDA/ROCm GPU: about 1 minute
    python bench/bench_amp.py --image-size 128 --epochs 4

Trains the bundled autoencoder (seed 003's residual model) as a real subprocess of
trainers/autoencoder.py twice on the same synthetic images, `--amp auto` and `--amp off`, and
prints the images per second (its `train/sps` metric, the mean of the epochs after the first,
which pays for cuDNN's autotuning) and the ratio. Without a GPU it says so and exits 0: the
figure only means something on one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def images_per_s(data: Path, out: Path, amp: str, args: argparse.Namespace) -> float:
    metrics = out / "metrics.jsonl"
    cmd = [
        sys.executable,
        str(REPO / "trainers" / "autoencoder.py"),
        "--arch",
        "residual",
        "--device",
        "cuda",
        "--amp",
        amp,
        "--data-dir",
        str(data),
        "--checkpoint-dir",
        str(out / "ckpt"),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
    ]
    subprocess.run(
        cmd,
        env={**os.environ, "TRAINGUARD_METRICS": str(metrics)},
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    sps = [r["sps"] for r in map(json.loads, metrics.read_text().splitlines()) if r.get("split") == "train"]
    return statistics.mean(sps[1:] or sps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA/ROCm GPU: AMP throughput is measured on a GPU only")
        return
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "images"
        write_images(data / "train", args.images, args.image_size, 0)
        write_images(data / "val", 64, args.image_size, 1)
        on = images_per_s(data, Path(d) / "amp", "auto", args)
        off = images_per_s(data, Path(d) / "fp32", "off", args)
    print(f"autoencoder (residual, {args.image_size}px, batch {args.batch_size}) on {torch.cuda.get_device_name()}:")
    print(f"  AMP bf16: {on:9.0f} images/s")
    print(f"  fp32:     {off:9.0f} images/s")
    print(f"  AMP / fp32: {on / off:.2f}x")


if __name__ == "__main__":
    main()
