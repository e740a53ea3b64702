"""The autoencoder trainer (seed 003): its pieces in-process, and real tiny runs as subprocesses on synthetic PNGs."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainer_harness import load_pt, one_torch_thread, read_records, signal_when, spawn  # noqa: F401 (a fixture)

from trainers import autoencoder as ae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAINER = Path(ae.__file__).resolve()
# 16x16 images, a 2x2x2 latent: a few seconds per run on a busy 2-core CPU.
TINY = ["--image-size", "16", "--base-channels", "4", "--latent-channels", "2", "--batch-size", "4", "--device", "cpu"]
CHECKPOINT_KEYS = {
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "val_psnr_db",
    "val_loss",
    "best_val_psnr_db",
    "best_epoch",
    "config",
    "args",
}


def _write_pngs(folder: Path, count: int, size: int = 24, seed: int = 0) -> None:
    """Smooth random colour patterns (sums of oriented waves), saved at ``size`` so the trainer must resize them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        img = np.zeros((size, size, 3))
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
            img += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)[..., None] * rng.uniform(0.2, 1, 3)
        img = (img - img.min()) / (img.max() - img.min() + 1e-9)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """12 training and 4 validation PNGs of 24x24 (3 steps per epoch at batch 4)."""
    root = tmp_path / "images"
    _write_pngs(root / "train", 12, seed=0)
    _write_pngs(root / "val", 4, seed=1)
    return root


def _launch(out: Path, data_dir: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    metrics, ckpt = out / "metrics.jsonl", out / "ckpt"
    argv = [*TINY, "--data-dir", str(data_dir), "--checkpoint-dir", str(ckpt), *args]
    return spawn(TRAINER, argv, metrics, one_thread=True), metrics, ckpt


def _run(out: Path, data_dir: Path, *args: str) -> tuple[Path, Path]:
    proc, metrics, ckpt = _launch(out, data_dir, *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return metrics, ckpt


# ---------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("arch", ae.ARCHS)
def test_each_arch_keeps_the_image_shape_and_its_latent_has_the_reported_size(arch):
    model = ae.create_model(arch, base_channels=8, latent_channels=3)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    z = model.encode(x)
    report = ae.latent_report(latent_channels=3, image_size=32)
    assert tuple(z.shape[1:]) == ae.latent_shape(3, 32) == (3, 4, 4) == tuple(report["latent_shape"])
    assert z[0].numel() == report["latent_values"] == 48
    assert report["compression_ratio"] == 3 * 32 * 32 / 48
    has_attention = any(isinstance(m, ae.SelfAttention) for m in model.modules())
    has_residual = any(isinstance(m, ae.ResidualBlock) for m in model.modules())
    assert (has_attention, has_residual) == {
        "baseline": (False, False),
        "residual": (False, True),
        "attention": (True, True),
    }[arch]


def test_warmup_goes_linearly_from_a_tenth_of_lr_to_lr_then_stays():
    lr, warmup_steps = 5e-5, 30  # 3 epochs of 10 steps
    lrs = [ae.lr_at(step, lr, warmup_steps) for step in range(60)]
    assert lrs[0] == pytest.approx(lr / 10)
    assert lrs[15] == pytest.approx(0.55 * lr)
    assert np.diff(lrs[:31]) == pytest.approx(np.full(30, 0.9 * lr / warmup_steps))  # equal increments: linear
    assert lrs[30:] == [lr] * 30
    assert [ae.lr_at(step, lr, 0) for step in range(5)] == [lr] * 5  # no warm-up: constant from the start


def test_gradient_clipping_bounds_the_norm_and_reports_the_norm_before_clipping():
    torch.manual_seed(0)
    model = ae.create_model("residual", base_channels=4, latent_channels=2)
    unclipped = copy.deepcopy(model)
    images = torch.rand(4, 3, 16, 16)

    _, free_norm = ae.train_step(unclipped, ae.make_optimizer(unclipped, "adam", 1e-3, 0.0), images, max_grad_norm=0)
    limit = float(free_norm) / 10
    _, reported = ae.train_step(model, ae.make_optimizer(model, "adamw", 1e-3, 1e-5), images, max_grad_norm=limit)

    def grad_norm(m: torch.nn.Module) -> float:
        return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.parameters()))

    assert float(reported) == pytest.approx(float(free_norm), rel=1e-4)  # same weights, same batch
    assert grad_norm(model) <= limit * (1 + 1e-4)  # the step used gradients scaled down to the limit
    assert grad_norm(unclipped) == pytest.approx(float(free_norm), rel=1e-4)  # 0 disables clipping


def test_quick_search_uses_5_percent_of_the_data_and_20_epochs_unless_given(tmp_path):
    quick = ae.parse_args(["--quick-search"])
    assert (quick.data_fraction, quick.epochs) == (0.05, 20)
    full = ae.parse_args([])
    assert (full.data_fraction, full.epochs) == (1.0, 30)
    explicit = ae.parse_args(["--quick-search", "--epochs", "3", "--data-fraction", "0.5"])
    assert (explicit.data_fraction, explicit.epochs) == (0.5, 3)

    _write_pngs(tmp_path / "train", 40, size=16)
    assert len(ae.load_split(tmp_path, "train", 16, quick.data_fraction, seed=1)) == 2  # 5% of 40
    assert len(ae.load_split(tmp_path, "train", 16)) == 40
    picks = {tuple(ae.subset_indices(100, 0.05, seed)) for seed in range(5)}
    assert all(len(set(p)) == 5 for p in picks) and len(picks) > 1  # 5 distinct images, drawn with the seed


def test_missing_data_is_an_error_event_that_says_how_to_make_it(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("TRAINGUARD_METRICS", str(metrics))
    with pytest.raises(FileNotFoundError, match=r"python trainers/prepare_images\.py"):
        ae.main(["--data-dir", str(tmp_path / "missing"), "--checkpoint-dir", str(tmp_path / "ckpt"), *TINY])
    error = read_records(metrics)[-1]
    assert error["event"] == "error" and error["type"] == "FileNotFoundError"


def test_memory_step_runs_one_real_step(tmp_path):
    step = ae.memory_step(
        ["--arch", "attention", "--base-channels", "8", "--image-size", "32", "--data-dir", str(tmp_path / "none")],
        batch_size=2,
    )
    loss, grad_norm = step()
    assert torch.isfinite(loss) and grad_norm > 0


# ---------------------------------------------------------------------------- real runs


def test_tiny_run_writes_best_and_last_and_a_metrics_stream_with_val_psnr(tmp_path, data_dir):
    metrics, ckpt = _run(
        tmp_path,
        data_dir,
        "--arch",
        "attention",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--warmup-epochs",
        "2",
        "--optimizer",
        "adamw",
        "--weight-decay",
        "1e-5",
    )

    best, last = load_pt(ckpt / "best.pt"), load_pt(ckpt / "last.pt")
    assert set(best) == set(last) == CHECKPOINT_KEYS and last["epoch"] == 3
    assert best["config"] == {"arch": "attention", "base_channels": 4, "latent_channels": 2, "image_size": 16}
    model = ae.create_model(**best["config"])
    model.load_state_dict(best["model_state_dict"])
    assert not [p.name for p in ckpt.iterdir() if ".tmp-" in p.name]

    records = read_records(metrics)
    start = records[0]
    assert start["event"] == "start" and start["config"]["arch"] == "attention"
    assert start["num_params"] == sum(p.numel() for p in model.parameters())
    assert (start["num_train"], start["num_val"], start["steps_per_epoch"]) == (12, 4, 3)
    assert (start["latent_values"], start["compression_ratio"]) == (8, 96.0)  # 2x2x2 for 3x16x16 pixels

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    assert [r["epoch"] for r in train] == [r["epoch"] for r in val] == [1, 2, 3]
    assert all(set(r) == {"t", "step", "epoch", "split", "loss", "lr", "grad_norm", "sps"} for r in train)
    assert all(
        set(r) == {"t", "step", "epoch", "split", "psnr_db", "loss", "latent_values", "compression_ratio"} for r in val
    )
    assert [r["step"] for r in val] == [3, 6, 9]
    # The lr of each epoch's last step: warm-up over 6 steps from 1e-4, then 1e-3.
    assert [r["lr"] for r in train] == pytest.approx([1e-3 * (0.1 + 0.9 * 2 / 6), 1e-3 * (0.1 + 0.9 * 5 / 6), 1e-3])
    assert all(r["latent_values"] == 8 and r["psnr_db"] > 0 for r in val)

    # psnr_db is the mean over validation images of 10 log10(1 / MSE), for the weights in the checkpoint.
    model.eval()
    val_images = ae.load_split(data_dir, "val", 16).float() / 255
    with torch.no_grad():
        mse = (model(val_images) - val_images).pow(2).mean(dim=(1, 2, 3)).numpy()
    assert best["val_psnr_db"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), rel=1e-4)
    assert best["val_psnr_db"] == pytest.approx(max(r["psnr_db"] for r in val))

    kinds = [r["kind"] for r in records if r.get("event") == "checkpoint"]
    assert kinds.count("last") == 3 and "best" in kinds
    done = records[-1]
    assert done["event"] == "done" and done["reason"] == "completed" and done["steps"] == 9
    assert done["best_val_psnr_db"] == pytest.approx(best["val_psnr_db"]) and done["best_epoch"] == best["epoch"]


def test_sigterm_saves_a_loadable_last_checkpoint_and_exits_143(tmp_path, data_dir):
    proc, metrics, ckpt = _launch(tmp_path, data_dir, "--arch", "residual", "--epochs", "100000")
    _, err = signal_when(proc, metrics, lambda r: r.get("split") == "val", "val record")
    assert proc.returncode == 143, err

    last = load_pt(ckpt / "last.pt")
    assert set(last) == CHECKPOINT_KEYS and last["epoch"] >= 1
    ae.create_model(**last["config"]).load_state_dict(last["model_state_dict"])
    records = read_records(metrics)
    assert records[-1]["event"] == "done" and records[-1]["reason"] == "stopped"
    assert records[-2]["event"] == "checkpoint" and records[-2]["kind"] == "last"
    assert not [p.name for p in ckpt.iterdir() if ".tmp-" in p.name]


def test_resume_continues_from_the_saved_epoch_as_if_never_stopped(tmp_path, data_dir):
    recipe = ["--arch", "residual", "--lr", "1e-3", "--warmup-epochs", "2", "--optimizer", "adamw"]
    _, first_ckpt = _run(tmp_path / "first", data_dir, *recipe, "--epochs", "2")
    metrics, ckpt = _run(
        tmp_path / "resumed", data_dir, *recipe, "--epochs", "3", "--resume", str(first_ckpt / "last.pt")
    )
    _, straight_ckpt = _run(tmp_path / "straight", data_dir, *recipe, "--epochs", "3")

    records = read_records(metrics)
    assert records[0]["event"] == "start" and records[0]["resumed_from_epoch"] == 2
    train = [r for r in records if r.get("split") == "train"]
    assert [(r["epoch"], r["step"]) for r in train] == [(3, 9)]  # epochs 1-2 are not redone; steps go on
    assert train[0]["lr"] == pytest.approx(1e-3)  # past the warm-up, as the step count says

    resumed, straight = load_pt(ckpt / "last.pt"), load_pt(straight_ckpt / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    for name, weight in straight["model_state_dict"].items():  # same batches and optimizer state: same weights
        torch.testing.assert_close(resumed["model_state_dict"][name], weight, rtol=1e-4, atol=1e-6)
    assert resumed["best_val_psnr_db"] == pytest.approx(straight["best_val_psnr_db"], rel=1e-4)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("TRAINGUARD_METRICS", raising=False)
    foreign = tmp_path / "foreign.pt"
    torch.save({"config": {"arch": "baseline", "base_channels": 4, "latent_channels": 2, "image_size": 16}}, foreign)
    with pytest.raises(ValueError, match="holds a model with"):
        ae.main(
            [
                *TINY,
                "--arch",
                "residual",
                "--data-dir",
                str(data_dir),
                "--checkpoint-dir",
                str(tmp_path / "c"),
                "--resume",
                str(foreign),
            ]
        )


def test_two_ddp_ranks_train_rank_zero_reports_and_a_ddp_checkpoint_resumes(tmp_path, data_dir):
    """Under torchrun (2 gloo ranks on the CPU): the global batch of 4 splits 2 per rank, one
    metrics stream and one checkpoint (plain weights, no DDP prefix), and resuming from it
    under torchrun continues at the next epoch."""

    def torchrun(out: Path, *args: str) -> tuple[Path, Path]:
        metrics, ckpt = out / "metrics.jsonl", out / "ckpt"
        env = {**os.environ, "TRAINGUARD_METRICS": str(metrics), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                str(TRAINER),
                *TINY,
                "--data-dir",
                str(data_dir),
                "--checkpoint-dir",
                str(ckpt),
                *args,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return metrics, ckpt

    metrics, ckpt = torchrun(tmp_path / "first", "--epochs", "2")
    records = read_records(metrics)
    [start] = [r for r in records if r.get("event") == "start"]
    assert start["config"]["world_size"] == 2 and start["config"]["batch_size_per_rank"] == 2
    assert [r["epoch"] for r in records if r.get("split") == "val"] == [1, 2]
    last = load_pt(ckpt / "last.pt")
    assert last["epoch"] == 2 and not any(k.startswith("module.") for k in last["model_state_dict"])

    metrics, _ = torchrun(tmp_path / "resumed", "--epochs", "3", "--resume", str(ckpt / "last.pt"))
    records = read_records(metrics)
    assert [r for r in records if r.get("event") == "start"][0]["resumed_from_epoch"] == 2
    assert [r["epoch"] for r in records if r.get("split") == "val"] == [3]
