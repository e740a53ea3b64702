"""prepare_images: real photographs -> train/val crops, deterministic, atomic, never clobbering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import prepare_images

SCRIPT = Path(prepare_images.__file__).resolve()
SOURCES = ["astronaut", "camera", "coins", "moon"]  # bundled with scikit-image, no download needed
SMALL = {"image_size": 24, "crops_per_image": 3, "val_sources": 2, "sources": SOURCES}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_crops(tmp_path):
    first = prepare_images.build_dataset(tmp_path / "a", seed=3, **SMALL)
    prepare_images.build_dataset(tmp_path / "b", seed=3, **SMALL)
    prepare_images.build_dataset(tmp_path / "c", seed=4, **SMALL)

    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert {k: v for k, v in a.items() if k.endswith(".png")} != {k: v for k, v in c.items() if k.endswith(".png")}
    assert json.loads(a["manifest.json"]) == first


def test_val_photographs_are_disjoint_from_train_ones_and_the_manifest_counts_them(tmp_path):
    manifest = prepare_images.build_dataset(tmp_path / "d", seed=0, **SMALL)

    train, val = manifest["sources"]["train"], manifest["sources"]["val"]
    assert len(val) == 2 and sorted(train + val) == SOURCES and not set(train) & set(val)
    assert manifest["split"] == "by_source" and manifest["seed"] == 0 and manifest["image_size"] == 24
    for split, names in (("train", train), ("val", val)):
        files = sorted(p.name for p in (tmp_path / "d" / split).iterdir())
        assert files == [f"{n}_{i:04d}.png" for n in names for i in range(3)]
        assert manifest["counts"][split] == len(files)


def test_load_image_folder_gives_rgb_floats_in_the_unit_range(tmp_path):
    prepare_images.build_dataset(tmp_path / "d", seed=0, **SMALL)

    images = prepare_images.load_image_folder(tmp_path / "d" / "train")
    raw = prepare_images.load_image_folder(tmp_path / "d" / "train", dtype=torch.uint8)
    assert images.shape == (6, 3, 24, 24) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.01
    assert torch.equal(raw.float() / 255.0, images)
    with pytest.raises(FileNotFoundError, match="no PNG images"):
        prepare_images.load_image_folder(tmp_path / "missing")


def test_an_existing_folder_is_kept_unless_force_is_given(tmp_path):
    out = tmp_path / "d"
    prepare_images.build_dataset(out, seed=0, **SMALL)
    (out / "notes.txt").write_text("mine")
    before = _files(out)

    with pytest.raises(FileExistsError, match="--force"):
        prepare_images.build_dataset(out, seed=1, **SMALL)
    assert _files(out) == before

    prepare_images.build_dataset(out, seed=1, force=True, **SMALL)
    after = _files(out)
    assert "notes.txt" not in after and json.loads(after["manifest.json"])["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary or old folder left behind


def test_a_build_that_fails_halfway_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing_crops(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_crops(*args, **kwargs)

    real_crops = prepare_images.random_crops
    monkeypatch.setattr(prepare_images, "random_crops", failing_crops)
    with pytest.raises(OSError, match="disk full"):
        prepare_images.build_dataset(tmp_path / "d", seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        prepare_images.build_dataset(tmp_path / "d", sources=["astronaut", "no_such_photo"])
    with pytest.raises(ValueError, match="at least one train and one val"):
        prepare_images.build_dataset(tmp_path / "d", image_size=24, crops_per_image=1, val_sources=4, sources=SOURCES)
    assert not (tmp_path / "d").exists()


def test_the_command_builds_then_refuses_to_clobber(tmp_path):
    argv = [
        sys.executable,
        str(SCRIPT),
        "--output-dir",
        "images/set",
        "--image-size",
        "16",
        "--crops-per-image",
        "1",
        "--val-sources",
        "1",
        "--sources",
        "camera",
        "coins",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_METRICS"}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert "Wrote 1 train crops from 1 photographs and 1 val crops" in first.stdout
    second = run()
    assert second.returncode == 1 and "--force" in second.stderr
    assert sorted(p.name for p in (tmp_path / "images" / "set").iterdir()) == ["manifest.json", "train", "val"]
