"""trainers/trainkit.py, the plumbing every bundled trainer shares: the metrics stream, stop
signals, atomic writes, plain-data checkpoints, the random streams a resume restores, the end
of a run and the PSNR metric."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_harness import read_records

from trainers import trainkit

TRAINERS = Path(trainkit.__file__).resolve().parent


def test_metrics_stream_writes_non_finite_values_as_json_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    with trainkit.MetricsStream(path) as stream:
        stream.log(3, "train", epoch=1, loss=float("nan"), acc=torch.tensor(0.5), lr=np.float32(1e-3))
        stream.log(4, "val", hi=float("inf"), lo=float("-inf"))
        stream.event("done", reason="completed", best_val_acc=float("nan"), best_epoch=np.int64(2))
    first, second, third = read_records(path)
    assert first["loss"] == "nan" and first["acc"] == 0.5 and first["lr"] == pytest.approx(1e-3)
    assert first["step"] == 3 and first["epoch"] == 1 and first["split"] == "train"
    assert "epoch" not in second and second["hi"] == "inf" and second["lo"] == "-inf"
    assert third["event"] == "done" and third["best_val_acc"] == "nan" and third["best_epoch"] == 2


def test_metrics_stream_without_a_path_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINGUARD_METRICS", raising=False)
    monkeypatch.chdir(tmp_path)
    stream = trainkit.MetricsStream()
    stream.log(1, "train", loss=1.0)
    stream.event("done", reason="completed")
    stream.close()
    assert list(tmp_path.iterdir()) == []


def test_metrics_stream_reports_no_device_memory_while_cuda_is_unused(tmp_path):
    path = tmp_path / "m.jsonl"
    with trainkit.MetricsStream(path) as stream:  # torch is imported, CUDA never initialised
        stream.log(1, "train", loss=1.0)
    assert [r.get("event") for r in read_records(path)] == [None]


@pytest.mark.gpu
def test_metrics_stream_reports_what_the_allocator_holds_on_a_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA/ROCm device")
    path = tmp_path / "m.jsonl"
    block = torch.ones(64, 2**20, device="cuda")  # 256 MiB
    with trainkit.MetricsStream(path) as stream:
        stream.log(1, "train", loss=1.0)
        stream.log(2, "train", loss=0.5)  # within DEVICE_MEMORY_EVERY_S: no second event
    events = [r for r in read_records(path) if r.get("event") == "device_memory"]
    assert len(events) == 1 and events[0]["pid"] == os.getpid() and events[0]["device"] == 0
    assert events[0]["reserved_bytes"] >= block.numel() * 4 and events[0]["uuid"]


def test_atomic_writes_replace_the_file_and_leave_no_temp_file(tmp_path):
    target = tmp_path / "history.json"
    trainkit.atomic_write_json({"val_acc": [0.5, float("nan")]}, target)
    with pytest.raises(TypeError):
        trainkit.atomic_write_json({"bad": object()}, target)
    assert json.loads(target.read_text()) == {"val_acc": [0.5, "nan"]}  # the failed write changed nothing
    trainkit.atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "history.json"]


def test_trainkit_imports_without_torch_or_numpy():
    code = (
        "import sys; sys.modules['torch'] = sys.modules['numpy'] = None; "
        f"sys.path.insert(0, {str(TRAINERS)!r}); import trainkit; trainkit.MetricsStream().log(1, 'train')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_METRICS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdin=subprocess.DEVNULL, timeout=30)


def test_stop_flag_records_the_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    flag = trainkit.StopFlag()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert flag.requested and flag.signum == signal.SIGTERM and flag.exit_code == 143
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_pick_device_validates_explicit_requests():
    assert trainkit.pick_device("cpu") == "cpu"
    assert trainkit.pick_device("auto") in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device"):
        trainkit.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA/ROCm GPU"):
            trainkit.pick_device("cuda")


def test_run_trainer_records_a_crash_as_an_error_event_and_reraises(tmp_path, monkeypatch):
    metrics_file = tmp_path / "m.jsonl"
    monkeypatch.setenv("TRAINGUARD_METRICS", str(metrics_file))

    def train(args, metrics, stop):
        metrics.log(1, "train", loss=1.0)
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        trainkit.run_trainer(train, None)
    last = json.loads(metrics_file.read_text().splitlines()[-1])
    assert last["event"] == "error" and last["type"] == "RuntimeError" and "out of memory" in last["message"]
    assert trainkit.run_trainer(lambda a, m, s: 0, None) == 0


# ---------------------------------------------------------------------------- checkpoints


class _RunsACommand:
    """What a hostile checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_checkpoint_refuses_a_pickled_object_without_running_it(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "last.pt"
    torch.save({"model_state_dict": {}, "payload": _RunsACommand(marker)}, path)  # torch.save pickles it as is
    with pytest.raises(ValueError, match=r"holds Python objects.*not loaded.*posix\.system.*written by trm_nav\.py"):
        trainkit.load_checkpoint(path, "trm_nav.py")
    assert not marker.exists()  # refused before anything ran
    with pytest.raises(ValueError, match="holds Python objects"):  # an argparse.Namespace is refused too
        torch.save({"args": argparse.Namespace(lr=0.1)}, path)
        trainkit.load_checkpoint(path, "autoencoder.py")


def test_load_checkpoint_names_a_missing_file_another_model_and_missing_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume .*nope\.pt does not exist; pass a last\.pt .* by x\.py"):
        trainkit.load_checkpoint(tmp_path / "nope.pt", "x.py")
    path = tmp_path / "last.pt"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="holds a list, not a checkpoint"):
        trainkit.load_checkpoint(path, "x.py")
    torch.save({"config": {"dim": 16}, "epoch": 3}, path)
    other = r"holds a model with \{'dim': 16\}, but these flags build .*pass the same --dim"
    with pytest.raises(ValueError, match=other):
        trainkit.load_checkpoint(path, "x.py", ("epoch",), config={"dim": 32}, flags="--dim")
    with pytest.raises(ValueError, match=r"lacks \['rng', 'step'\]: it was not written by this x\.py"):
        trainkit.load_checkpoint(path, "x.py", ("epoch", "step", "rng"), config={"dim": 16})
    assert trainkit.load_checkpoint(path, "x.py", ("epoch",), config={"dim": 16}) == {"config": {"dim": 16}, "epoch": 3}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (np.float64(0.5), "numpy.float64"),
        (Path("ckpt"), "PosixPath"),
        (argparse.Namespace(lr=1), "Namespace"),
        (np.zeros(2), "numpy.ndarray"),
    ],
    ids=["numpy-scalar", "path", "namespace", "numpy-array"],
)
def test_save_checkpoint_refuses_what_a_plain_load_would_refuse_before_writing(tmp_path, value, named):
    path, metrics = tmp_path / "last.pt", tmp_path / "m.jsonl"
    refused = rf"state\['args'\]\['x'\] is a .*{named}"
    with trainkit.MetricsStream(metrics) as stream, pytest.raises(TypeError, match=refused):
        trainkit.save_checkpoint(stream, {"epoch": 1, "args": {"x": value}}, path, kind="last", step=1, epoch=1)
    assert not path.exists() and read_records(metrics) == []


def test_save_checkpoint_writes_what_load_checkpoint_reads_and_reports_it(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "epoch": 2,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "history": {"loss": [0.5, float("nan")]},
        "config": {"dim": 3},
        "best": None,
        "rng": trainkit.rng_state(),
    }
    path, metrics = tmp_path / "best.pt", tmp_path / "m.jsonl"
    with trainkit.MetricsStream(metrics) as stream:
        trainkit.save_checkpoint(stream, state, path, kind="best", step=7, epoch=2, mode="proxy")
    loaded = trainkit.load_checkpoint(path, "x.py", state, config={"dim": 3})
    assert loaded["epoch"] == 2 and torch.equal(loaded["model_state_dict"]["weight"], model.weight.detach())
    assert loaded["optimizer_state_dict"]["param_groups"] == optimizer.state_dict()["param_groups"]
    [event] = read_records(metrics)
    assert {k: v for k, v in event.items() if k != "t"} == {
        "event": "checkpoint",
        "path": str(path),
        "step": 7,
        "epoch": 2,
        "kind": "best",
        "mode": "proxy",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "m.jsonl"]


def test_rng_state_round_trips_every_stream_through_a_plain_checkpoint(tmp_path):
    trainkit.seed_everything(5)
    path = tmp_path / "c.pt"
    with trainkit.MetricsStream(None) as stream:
        trainkit.save_checkpoint(stream, {"rng": trainkit.rng_state("cpu")}, path, kind="last", step=0, epoch=0)

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(), np.random.randn()

    expected = draws()
    trainkit.seed_everything(99)  # move every stream elsewhere
    trainkit.restore_rng(trainkit.load_checkpoint(path, "x.py")["rng"], "cpu")
    assert draws() == expected


# ---------------------------------------------------------------------------- psnr_db


def test_psnr_db_is_10_log10_of_one_over_mse_per_image_clamped_and_finite():
    target = torch.full((3, 3, 4, 4), 0.5)
    image = target.clone()
    image[1] += 0.1  # MSE 0.01: 20 dB
    image[2] = 1.5  # overshoots: clamped to 1.0, so MSE 0.25 (6.02 dB), not 1.0 (0 dB)
    psnr = trainkit.psnr_db(image, target)
    assert psnr.shape == (3,)
    assert psnr.tolist() == pytest.approx([100.0, 20.0, 10 * np.log10(4)], rel=1e-5)  # perfect: 100 dB, not inf
    assert trainkit.psnr_db(image.bfloat16(), target).dtype == torch.float32


def test_both_image_trainers_score_psnr_with_the_one_definition():
    from trainers import autoencoder, gauss_decoder

    assert autoencoder.psnr_db is gauss_decoder.psnr_db  # the trainers import trainkit by its file's name
    assert autoencoder.psnr_db.__code__.co_filename == trainkit.psnr_db.__code__.co_filename


# ---------------------------------------------------------------------------- finish


@pytest.mark.parametrize("stopped", [False, True], ids=["completed", "stopped"])
def test_finish_writes_the_done_event_and_on_a_stop_the_last_checkpoint(tmp_path, capsys, stopped):
    flag = trainkit.StopFlag()
    saved = []
    try:
        if stopped:
            signal.raise_signal(signal.SIGTERM)
        with trainkit.MetricsStream(tmp_path / "m.jsonl") as stream:
            code = trainkit.finish(
                stream,
                flag,
                stopped=stopped,
                save_last=lambda: saved.append("last"),
                last_path=tmp_path / "last.pt",
                best_name="best_val_acc",
                best_value=0.75,
                best_epoch=2,
                best_line="Best val acc {value:.4f} at epoch {epoch}",
                epochs=3,
                steps=30,
                reason="early_stopping",
            )
    finally:
        flag.restore()
    [done] = read_records(tmp_path / "m.jsonl")
    assert {k: v for k, v in done.items() if k != "t"} == {
        "event": "done",
        "reason": "stopped" if stopped else "early_stopping",
        "best_val_acc": 0.75,
        "best_epoch": 2,
        "epochs": 3,
        "steps": 30,
    }
    assert list(done)[:3] == ["t", "event", "reason"]  # the field order every trainer's done event had
    out = capsys.readouterr().out.splitlines()
    assert (code, saved) == ((143, ["last"]) if stopped else (0, []))
    assert out == ([f"Stopped by signal 15; wrote {tmp_path / 'last.pt'}"] if stopped else []) + [
        "Best val acc 0.7500 at epoch 2"
    ]


def test_finish_without_a_best_epoch_reports_none_and_prints_no_best_line(tmp_path, capsys):
    flag = trainkit.StopFlag()
    try:
        with trainkit.MetricsStream(tmp_path / "m.jsonl") as stream:
            code = trainkit.finish(
                stream,
                flag,
                stopped=False,
                save_last=lambda: None,
                last_path=tmp_path / "l.pt",
                best_name="best_val_psnr_db",
                best_value=float("-inf"),
                best_epoch=0,
                best_line="Best {value} at {epoch}",
                epochs=0,
                steps=0,
            )
    finally:
        flag.restore()
    [done] = read_records(tmp_path / "m.jsonl")
    assert (done["reason"], done["best_val_psnr_db"], done["best_epoch"], code) == ("completed", None, None, 0)
    assert capsys.readouterr().out == ""
