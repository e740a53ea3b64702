"""The Gaussian decoder: its three renderers against each other, and the trainer run for real as a subprocess.

The subprocess runs read tiny synthetic PNGs written into tmp_path: synthetic images are for these
unit tests only; the trainer itself is meant for the real photographs of prepare_images.py.
"""

from __future__ import annotations

import math
import tomllib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from trainer_harness import load_pt, read_records, signal_when, spawn

from trainers import gauss_decoder as gd

TRAINER = Path(gd.__file__).resolve()
TINY = ["--image_size", "32", "--num_gaussians", "16", "--width", "8", "--batch_size", "4", "--device", "cpu"]


def _random_gaussians(batch: int, k: int, size: int, seed: int, sigma=(0.8, 12.0), margin=-8.0) -> gd.Gaussians:
    """Gaussians of mixed sizes, rotations and opacities; with a negative margin some lie partly off the image."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    return gd.Gaussians(
        means=uniform(margin, size - 1 - margin, batch, k, 2),
        scales=uniform(*sigma, batch, k, 2),
        rotations=uniform(-math.pi, math.pi, batch, k),
        colours=uniform(0, 1, batch, k, 3),
        opacities=uniform(0.05, 1, batch, k),
        phases=uniform(-math.pi, math.pi, batch, k),
        background=uniform(0, 1, batch, 3),
    )


def _as(g: gd.Gaussians, dtype: torch.dtype, grad: bool = False) -> gd.Gaussians:
    return gd.Gaussians(*(t.detach().to(dtype).requires_grad_(grad) for t in g))


# ---------------------------------------------------------------------------- renderers


@pytest.mark.parametrize("phase_blending", [False, True], ids=["normal", "phase"])
def test_tile_renderer_matches_dense_within_1e4_at_128px_with_256_gaussians(phase_blending):
    g = _as(_random_gaussians(2, 256, 128, seed=1), torch.float32)
    with torch.no_grad():
        tile, tile_alpha = gd.render(g, 128, 128, "tile", phase_blending)
        dense, dense_alpha = gd.render(g, 128, 128, "dense", phase_blending)
    assert tile.shape == (2, 3, 128, 128) and tile_alpha.shape == (2, 1, 128, 128)
    assert (tile - dense).abs().max() < 1e-4
    assert (tile_alpha - dense_alpha).abs().max() < 1e-4
    assert 0.0 <= tile.min() and tile.max() <= 1.0 + 1e-6


def test_tile_renderer_handles_sizes_that_are_not_a_multiple_of_the_tile():
    g = _as(_random_gaussians(1, 40, 40, seed=2, sigma=(0.5, 6.0)), torch.float32)
    with torch.no_grad():
        tile, _ = gd.render(g, 37, 45, "tile")
        dense, _ = gd.render(g, 37, 45, "dense")
    assert tile.shape == (1, 3, 37, 45) and (tile - dense).abs().max() < 1e-4


def test_fourier_renderer_matches_untruncated_dense_for_gaussians_well_inside():
    """Tolerance 1e-4: with sigma >= 2 px the spectrum beyond Nyquist is below exp(-pi^2 sigma^2 / 2) ~ 3e-9,
    and a 6-sigma margin keeps what wraps around the borders below exp(-18); float32 rounding remains."""
    g = _as(_random_gaussians(2, 12, 64, seed=3, sigma=(2.0, 4.0), margin=24.0), torch.float32)
    cov = gd.covariance(g.scales, g.rotations)
    inv = gd.conic(cov, g.scales)
    feats = torch.cat((g.colours, torch.ones_like(g.opacities)[..., None]), -1)
    fourier = gd.accumulate_fourier(g.means, cov, inv, g.opacities, feats, 64, 64)
    dense = gd.accumulate_dense(g.means, cov, inv, g.opacities, feats, 64, 64, cutoff=None)
    assert fourier.shape == dense.shape == (2, 4, 64, 64)
    assert (fourier - dense).abs().max() < 1e-4


def test_fourier_renderer_wraps_a_gaussian_at_the_border_around_the_image():
    g = _as(_random_gaussians(1, 1, 32, seed=4, sigma=(3.0, 3.0)), torch.float32)
    g = g._replace(means=torch.tensor([[[0.0, 16.0]]]), opacities=torch.ones(1, 1))
    cov = gd.covariance(g.scales, g.rotations)
    ones = torch.ones(1, 1, 1)
    fourier = gd.accumulate_fourier(g.means, cov, gd.conic(cov, g.scales), g.opacities, ones, 32, 32)
    dense = gd.accumulate_dense(g.means, cov, gd.conic(cov, g.scales), g.opacities, ones, 32, 32, cutoff=None)
    # Seed 000's "FFT interference": the right edge lights up with the Gaussian sitting on the left edge.
    assert fourier[0, 0, 16, 31] > 0.9 and dense[0, 0, 16, 31] < 1e-10


def test_gradients_through_the_tile_renderer_reach_every_parameter_and_match_dense():
    g64 = _random_gaussians(2, 24, 48, seed=5, sigma=(1.0, 6.0))
    target = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    grads = {}
    for renderer in ("tile", "dense"):
        g = _as(g64, torch.float32, grad=True)
        image, alpha = gd.render(g, 48, 48, renderer, phase_blending=True)
        (F.mse_loss(image, target) + alpha.mean()).backward()
        grads[renderer] = [t.grad for t in g]
    for name, tile, dense in zip(gd.Gaussians._fields, grads["tile"], grads["dense"], strict=True):
        assert tile is not None and torch.isfinite(tile).all(), name
        assert tile.abs().sum() > 0, name
        torch.testing.assert_close(tile, dense, rtol=1e-3, atol=1e-6, msg=name)


def test_tile_sum_backward_matches_numerical_gradients():
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(9, 5, dtype=torch.float64, generator=gen, requires_grad=True)  # 9 pairs, 5 pixels per tile
    feats = torch.rand(9, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    tile_index = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # tile 1 has no pairs
    assert torch.autograd.gradcheck(lambda a, b: gd.TileSum.apply(a, b, tile_index, 4), (w, feats))
    out = gd.TileSum.apply(w, feats, tile_index, 4)  # (4, 3, 5)
    torch.testing.assert_close(out[0], feats[:3].T @ w[:3])
    assert (out[1] == 0).all()


def test_tile_memory_follows_overlaps_not_pixels_times_gaussians():
    g = _as(_random_gaussians(1, 256, 128, seed=6, sigma=(1.0, 4.0), margin=0.0), torch.float32)
    gid, tile_x, tile_y, tile_index = gd.tile_overlaps(g.means, gd.covariance(g.scales, g.rotations), 128, 128)
    assert torch.equal(tile_index, (gid // 256) * 64 + tile_y * 8 + tile_x)
    assert (tile_index.diff() >= 0).all()  # grouped by tile, as the segment sums need
    assert len(gid) < 256 * 64 / 4  # far fewer (Gaussian, tile) pairs than Gaussians x 64 tiles


def test_the_untrained_model_renders_a_mosaic_close_to_its_input():
    model = gd.create_model(num_gaussians=64, image_size=32, width=8)
    x = F.interpolate(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)), size=32, mode="bilinear")
    g = model.encode(x)
    assert g.means.shape == (2, 64, 2) and g.scales.shape == (2, 64, 2) and g.colours.shape == (2, 64, 3)
    assert gd.psnr_db(model(x), x).min() > 20  # zero-initialised heads: cell colours on a regular grid


def test_memory_step_runs_one_real_step_with_the_configured_renderer():
    step = gd.memory_step(["--num_gaussians", "16", "--image_size", "32", "--width", "8"], batch_size=2)
    parts, grad_norm = step()
    assert parts["image"].shape == (2, 3, 32, 32) and torch.isfinite(parts["loss"]) and grad_norm > 0
    step4 = gd.memory_step(["--experiment", "4", "--num_gaussians", "16", "--image_size", "32"], batch_size=1)
    parts4, grad_norm4 = step4()  # experiment 4: fourier renderer with phase blending
    assert torch.isfinite(parts4["loss"]) and torch.isfinite(grad_norm4)


def test_experiment_presets_fill_only_the_flags_not_given():
    two, three, four = (gd.parse_args(["--experiment", n]) for n in "234")
    assert (two.lr, two.occ_weight, two.occ_threshold, two.renderer) == (1e-5, 2.7, 0.3, "tile")
    assert two.phase_retrieval_weight == 0 and not two.use_phase_blending
    assert three.phase_retrieval_weight == 0.05 and three.renderer == "tile"
    assert four.use_phase_blending and four.renderer == "fourier"
    mixed = gd.parse_args(["--experiment", "4", "--renderer", "tile", "--no-use_phase_blending", "--lr", "3e-5"])
    assert (mixed.renderer, mixed.use_phase_blending, mixed.lr) == ("tile", False, 3e-5)


def test_every_spec_parameter_is_a_flag_the_trainer_accepts():
    spec = tomllib.loads(TRAINER.with_suffix(".toml").read_text())
    argv = []
    for name, param in spec["params"].items():
        value = param.get("default", (param.get("choices") or [param.get("min", "x")])[-1])
        argv += [param["flag"]] if param["type"] == "bool" else [param["flag"], str(value)]
        assert name in vars(gd.parse_args([])), name  # the spec's name is the argparse destination
    args = gd.parse_args(argv)
    assert args.use_phase_blending and args.renderer == "fourier"


def test_losses_are_finite_and_phase_retrieval_counts_only_when_weighted():
    model = gd.create_model(num_gaussians=16, image_size=32, width=8)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    off = gd.losses(model, x, gd.parse_args(["--experiment", "2"]), nullcontext())
    on = gd.losses(model, x, gd.parse_args(["--experiment", "3"]), nullcontext())
    assert off["phase_loss"] == 0 and on["phase_loss"] > 0
    expected = on["recon_loss"] + 2.7 * on["occ_loss"] + 0.05 * on["phase_loss"]
    assert on["loss"].item() == pytest.approx(expected.item())


# ---------------------------------------------------------------------------- the trainer as a subprocess


def _write_synthetic_images(data: Path, counts: dict[str, int], size: int = 32) -> None:
    """Smooth random colour blobs, a few per image (tests only)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, count in counts.items():
        (data / split).mkdir(parents=True)
        for i in range(count):
            img = np.zeros((size, size, 3)) + rng.random(3) * 0.5
            for _ in range(4):
                cy, cx, s = rng.random() * size, rng.random() * size, 2 + rng.random() * size / 4
                img += rng.random(3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(data / split / f"img_{i:03d}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gauss") / "data"
    _write_synthetic_images(folder, {"train": 8, "val": 4})
    return folder


def _launch(tmp_path: Path, data: Path, *args: str, ckpt: str = "ckpt", metrics: str = "metrics.jsonl"):
    argv = [*TINY, "--data_dir", str(data), "--output_dir", str(tmp_path / ckpt), *args]
    return spawn(TRAINER, argv, tmp_path / metrics, one_thread=True), tmp_path / metrics, tmp_path / ckpt


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[str, str, Path, Path]:
    """One uninterrupted 2-epoch run of experiment 3: (stdout, stderr, metrics file, checkpoint folder)."""
    proc, metrics, ckpt = _launch(tmp_path_factory.mktemp("straight"), data, "--epochs", "2", "--experiment", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, err, metrics, ckpt


def test_tiny_run_writes_checkpoints_and_a_metrics_stream_with_val_psnr(two_epochs):
    out, _, metrics, ckpt = two_epochs
    assert "Epoch 0 (initial model) - Val PSNR:" in out and "Epoch 2/2" in out
    last, best = load_pt(ckpt / "last.pt"), load_pt(ckpt / "best.pt")
    assert (
        last["epoch"] == 2
        and last["step"] == 4
        and last["config"] == {"num_gaussians": 16, "image_size": 32, "width": 8}
    )
    model = gd.create_model(**best["config"])
    model.load_state_dict(best["model_state_dict"])

    records = read_records(metrics)
    start = records[0]
    assert start["event"] == "start" and start["config"]["phase_retrieval_weight"] == 0.05
    val = [r for r in records if r.get("split") == "val"]
    assert [r["epoch"] for r in val] == [0, 1, 2]
    val_keys = {"t", "step", "epoch", "split", "psnr_db", "recon_loss", "fourier_mag_l1", "occupied_frac"}
    assert all(set(r) == val_keys for r in val)
    assert all(5 < r["psnr_db"] < 60 for r in val)
    train = [r for r in records if r.get("split") == "train"]
    assert [r["epoch"] for r in train] == [1, 2]
    assert {"loss", "recon_loss", "occ_loss", "phase_loss", "psnr_db", "grad_norm", "lr", "sps"} <= set(train[0])
    assert train[0]["phase_loss"] > 0
    kinds = [r["kind"] for r in records if r.get("event") == "checkpoint"]
    assert kinds.count("last") == 2 and "best" in kinds
    done = records[-1]
    assert done["event"] == "done" and done["reason"] == "completed" and done["epochs"] == 2
    assert done["best_val_psnr_db"] == pytest.approx(max(r["psnr_db"] for r in val[1:]))


def test_sigterm_saves_a_loadable_last_checkpoint_and_exits_143(tmp_path, data):
    proc, metrics, ckpt = _launch(tmp_path, data, "--epochs", "100000")
    _, err = signal_when(proc, metrics, lambda r: r.get("split") == "val" and r["epoch"] >= 1, "finished epoch")
    assert proc.returncode == 143, err

    last = load_pt(ckpt / "last.pt")
    assert last["epoch"] >= 1
    gd.create_model(**last["config"]).load_state_dict(last["model_state_dict"])
    records = read_records(metrics)
    assert records[-1]["event"] == "done" and records[-1]["reason"] == "stopped"
    assert records[-2]["event"] == "checkpoint" and records[-2]["kind"] == "last"
    assert not [p.name for p in ckpt.iterdir() if ".tmp-" in p.name]


def test_resume_continues_from_the_saved_epoch_like_an_uninterrupted_run(tmp_path, data, two_epochs):
    first, _, ckpt = _launch(tmp_path, data, "--epochs", "1", "--experiment", "3")
    assert first.communicate(timeout=120)[0] and first.returncode == 0

    resumed, metrics, _ = _launch(
        tmp_path, data, "--epochs", "2", "--experiment", "3", "--resume", str(ckpt / "last.pt"), metrics="resumed.jsonl"
    )
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "Resumed from" in out and "Epoch 1/" not in out and "Epoch 2/2" in out

    records = read_records(metrics)
    assert [(r["split"], r["epoch"], r["step"]) for r in records if "split" in r] == [("train", 2, 4), ("val", 2, 4)]
    last, reference = load_pt(ckpt / "last.pt"), load_pt(two_epochs[3] / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 4
    for name, value in reference["model_state_dict"].items():  # model, optimizer and RNG state all came back
        torch.testing.assert_close(last["model_state_dict"][name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_resume_refuses_a_checkpoint_of_another_model_size(tmp_path, data, monkeypatch):
    monkeypatch.setenv("TRAINGUARD_METRICS", str(tmp_path / "metrics.jsonl"))
    torch.save({"config": {"num_gaussians": 16, "image_size": 32, "width": 8}}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="--num_gaussians"):
        gd.main(
            [
                *TINY,
                "--num_gaussians",
                "25",
                "--data_dir",
                str(data),
                "--output_dir",
                str(tmp_path / "ckpt"),
                "--resume",
                str(tmp_path / "last.pt"),
            ]
        )
    assert read_records(tmp_path / "metrics.jsonl")[-1]["type"] == "ValueError"


def test_missing_data_says_how_to_create_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINGUARD_METRICS", str(tmp_path / "metrics.jsonl"))
    with pytest.raises(FileNotFoundError, match="prepare_images.py"):
        gd.main([*TINY, "--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "ckpt")])
    error = read_records(tmp_path / "metrics.jsonl")[-1]
    assert error["event"] == "error" and error["type"] == "FileNotFoundError"
    assert "prepare_images.py" in error["message"]
