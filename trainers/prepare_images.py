"""Build the real-image training set for the Gaussian decoder from photographs shipped with scikit-image.

Usage:
    python trainers/prepare_images.py                          # images/training_diverse, 128x128, seed 0
    python trainers/prepare_images.py --image-size 64 --crops-per-image 32 --output-dir images/small
    python trainers/prepare_images.py --force                  # rebuild an existing folder

Seed 000 insists on real photographs ("synthetic training data from a poor decoder = garbage in,
garbage out"), and this machine may have no internet, so the sources are the photographs that
scikit-image installs with its package (``skimage.data``). Sources that would need a download
(pooch) are skipped and listed in the manifest; synthetic test patterns (checkerboard, colour
wheel, logo, blobs, phantom) and non-photographs (horse silhouette, phase images) are never used.

Layout written (the autoencoder trainers read the same folder):
    <output-dir>/train/<source>_<index>.png   RGB uint8, --image-size square
    <output-dir>/val/<source>_<index>.png
    <output-dir>/manifest.json                sources per split, counts, size, seed, skipped sources

The split is BY SOURCE PHOTOGRAPH: the val crops come from --val-sources photographs that no
train crop comes from, so val PSNR measures generalisation to unseen images, not memorised
pixels. Each crop is a random square whose side is drawn between --image-size (or the photo's
short side, if smaller) and the short side, resized to --image-size with a Lanczos filter;
greyscale photographs are copied into all three channels. Everything is a function of --seed.

The folder is built under a temporary name and renamed into place, so a half-built folder never
looks complete, and an existing non-empty folder is only replaced with --force.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST_VERSION = 1


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """Name -> loader for every photograph we accept; imported lazily so --help stays fast."""
    from skimage import data

    return {
        "astronaut": data.astronaut,
        "brick": data.brick,
        "camera": data.camera,
        "chelsea": data.chelsea,  # data.cat is the same photograph; listed once
        "clock": data.clock,
        "coffee": data.coffee,
        "coins": data.coins,
        "grass": data.grass,
        "gravel": data.gravel,
        "hubble_deep_field": data.hubble_deep_field,
        "immunohistochemistry": data.immunohistochemistry,
        "moon": data.moon,
        "motorcycle": lambda: data.stereo_motorcycle()[0],  # the left view of the stereo pair
        "page": data.page,
        "retina": data.retina,
        "rocket": data.rocket,
    }


def load_sources(names: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Loads the photographs that are available offline.

    Args:
        names: Subset of source names to load; None loads every known photograph.

    Returns:
        (images, skipped): images maps name -> (H, W, 3) uint8 array; skipped maps name -> reason
        for each source that could not be loaded here (e.g. it needs a download).

    Raises:
        ValueError: If a requested name is not a known photograph.
    """
    loaders = _photo_loaders()
    unknown = sorted(set(names or []) - set(loaders))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known photographs: {sorted(loaders)}")
    images, skipped = {}, {}
    for name in sorted(names or loaders):
        try:
            with warnings.catch_warnings():  # some loaders warn about optional plugins; not our business
                warnings.simplefilter("ignore")
                img = np.asarray(loaders[name]())
        except (ImportError, OSError, ValueError) as exc:  # ModuleNotFoundError (no pooch) is an ImportError
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)  # greyscale -> RGB, so every crop is (H, W, 3)
        images[name] = np.ascontiguousarray(img[:, :, :3].astype(np.uint8))  # (H, W, 3)
    return images, skipped


def random_crops(image: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random square crops of ``image`` (H, W, 3), each resized to (size, size, 3) uint8.

    Crop sides vary from ``size`` to the short side, so the set mixes fine texture (1:1 crops)
    with whole-scene views (downscaled), which is what "diverse" asks of a decoder.
    """
    h, w = image.shape[:2]
    short = min(h, w)
    low = min(size, short)
    pil = Image.fromarray(image)
    crops = []
    for _ in range(count):
        side = int(rng.integers(low, short + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        box = (left, top, left + side, top + side)
        crop = pil.crop(box) if side == size else pil.resize((size, size), Image.Resampling.LANCZOS, box=box)
        crops.append(np.asarray(crop))  # (size, size, 3) uint8
    return crops


def split_sources(names: list[str], val_sources: int, seed: int) -> tuple[list[str], list[str]]:
    """Deterministically assigns whole photographs to train or val; returns (train, val), each sorted."""
    if not 1 <= val_sources < len(names):
        raise ValueError(
            f"need at least one train and one val photograph: {len(names)} loaded, --val-sources {val_sources}"
        )
    order = np.random.default_rng([seed, 0]).permutation(len(names))
    val = sorted(names[i] for i in order[:val_sources])
    return sorted(set(names) - set(val)), val


def build_dataset(
    output_dir: Path,
    image_size: int = 128,
    crops_per_image: int = 64,
    val_sources: int = 3,
    seed: int = 0,
    sources: list[str] | None = None,
    force: bool = False,
) -> dict:
    """Writes train/ and val/ PNG crops and manifest.json into ``output_dir`` atomically.

    Args:
        output_dir: Folder to create; its parent is created if needed.
        image_size: Side of the square crops in pixels.
        crops_per_image: Crops taken from each source photograph.
        val_sources: How many whole photographs are held out for val.
        seed: Seed of the split and of every crop position and size.
        sources: Restrict to these source names (default: every photograph available offline).
        force: Replace an existing non-empty ``output_dir``.

    Returns:
        The manifest that was written.

    Raises:
        FileExistsError: If ``output_dir`` exists, is not empty and ``force`` is False.
        ValueError: For bad sizes or too few photographs to split.
    """
    output_dir = Path(output_dir)
    if image_size < 8 or crops_per_image < 1:
        raise ValueError("--image-size must be at least 8 and --crops-per-image at least 1")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not force:
        raise FileExistsError(f"{output_dir} already exists and is not empty; pass --force to replace it")

    # 1. Sources and split: whole photographs go to one side, so val is truly unseen.
    images, skipped = load_sources(sources)
    train_names, val_names = split_sources(sorted(images), val_sources, seed)

    # 2. Build everything in a temporary sibling folder (same filesystem, so the rename is atomic).
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = {}
        for split, names in (("train", train_names), ("val", val_names)):
            (tmp / split).mkdir(parents=True)
            for name in names:
                # One generator per photograph, keyed by its name: adding or losing a source
                # elsewhere does not move this photograph's crops.
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                for i, crop in enumerate(random_crops(images[name], crops_per_image, image_size, rng)):
                    Image.fromarray(crop).save(tmp / split / f"{name}_{i:04d}.png", optimize=False)
            counts[split] = len(names) * crops_per_image
        manifest = {
            "version": MANIFEST_VERSION,
            "image_size": image_size,
            "channels": 3,
            "crops_per_image": crops_per_image,
            "seed": seed,
            "split": "by_source",
            "sources": {"train": train_names, "val": val_names},
            "counts": counts,
            "skipped": skipped,
            "shapes": {name: list(images[name].shape) for name in sorted(images)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

        # 3. Swap into place: the old folder (with --force) is moved aside first, then removed.
        old = None
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        if old is not None and old.is_dir():
            shutil.rmtree(old)
        elif old is not None:
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_image_folder(folder: str | os.PathLike, dtype=None, limit: int | None = None):
    """Reads every ``*.png`` in ``folder`` (sorted by name) into one tensor.

    Args:
        folder: A folder of equally sized images, e.g. ``images/training_diverse/train``.
        dtype: torch.float32 (default) gives values in [0, 1]; torch.uint8 keeps the raw bytes
            (4x less memory for a large set; convert per batch).
        limit: Read only the first ``limit`` files.

    Returns:
        A tensor (N, 3, H, W).

    Raises:
        FileNotFoundError: If the folder is missing or holds no PNG files.
        ValueError: If the images differ in size.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    folder = Path(folder)
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no PNG images in {folder}")
    arrays = []
    for path in files[:limit]:
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB")))  # (H, W, 3) uint8
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images in {folder} differ in size: {sorted(sizes)}")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    return batch if dtype == torch.uint8 else batch.to(dtype) / 255.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line; every flag has a default."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("images/training_diverse"),
        help="folder to create, relative to the current directory (your project)",
    )
    p.add_argument("--image-size", type=int, default=128, help="side of the square crops in pixels")
    p.add_argument("--crops-per-image", type=int, default=64, help="random crops taken from each photograph")
    p.add_argument(
        "--val-sources",
        type=int,
        default=3,
        help="whole photographs held out for validation (at least 1, fewer than the photographs loaded)",
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=None,
        metavar="NAME",
        help="use only these photographs (default: all that load offline); see --list",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every crop")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --output-dir")
    p.add_argument("--list", action="store_true", help="print which photographs load here, then exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 on success, 1 when the folder exists, 2 for bad arguments."""
    args = parse_args(argv)
    if args.list:
        images, skipped = load_sources(args.sources)
        for name, img in images.items():
            print(f"ok       {name:22s} {img.shape[1]}x{img.shape[0]}")
        for name, reason in skipped.items():
            print(f"skipped  {name:22s} {reason}")
        return 0
    try:
        manifest = build_dataset(
            args.output_dir,
            args.image_size,
            args.crops_per_image,
            args.val_sources,
            args.seed,
            args.sources,
            args.force,
        )
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts, srcs = manifest["counts"], manifest["sources"]
    print(
        f"Wrote {counts['train']} train crops from {len(srcs['train'])} photographs and {counts['val']} val crops "
        f"from {', '.join(srcs['val'])} ({args.image_size}x{args.image_size}) to {args.output_dir}",
        flush=True,
    )
    if manifest["skipped"]:
        print(f"Skipped (not available offline): {', '.join(manifest['skipped'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
