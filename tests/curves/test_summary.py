"""summarize_run, compare_runs and plot_run through the MCP server, on real runs and real files."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, call, error, ok, wait_until, write_experiment
from mcp_server import runs
from mcp_server.curves.load import loaded
from mcp_server.curves.summary import BUDGET_CHARS
from mcp_server.rundir import TERMINAL


def finished(run_id: str):
    return wait_until(lambda: (st := runs.status(run_id)).status in TERMINAL and st, 120, f"{run_id} to end")


def test_a_real_trm_run_is_summarised_from_its_metrics_stream_within_budget(tiny_trm):
    run_id = ok("launch_run", {"experiment": "911"})["run_id"]
    assert finished(run_id).status == "succeeded"
    result = ok("summarize_run", {"run_id": run_id})
    s = result["summary"]
    assert s["source"].startswith("jsonl: ") and s["source"].endswith("metrics.jsonl")
    assert {f.split(":")[0] for f in s["also_found"]} == {"history", "stdout"}  # the same numbers, not used
    assert s["primary_metric"] == "val/acc" and s["primary"]["count"] == 3 and s["primary"]["direction"] == "max"
    assert s["headline"].startswith(f"best val/acc {s['primary']['best']['value']:.4g} at epoch")
    assert s["done_reason"] and s["events"]["done"] == 1
    assert {m["name"] for m in s["metrics"]} >= {"train/loss", "val/loss", "train/acc"}
    assert len(json.dumps(s)) <= BUDGET_CHARS


def seed_001_log(epochs: int = 50) -> str:
    """Seed 001's printed lines: train accuracy to 0.9998 while validation stalls at ~0.72."""
    lines = []
    for e in range(1, epochs + 1):
        train_loss = 1.6 * np.exp(-e / 7) + 0.0012
        val_loss = 1.45 * np.exp(-e / 6) + 0.6 + max(0, e - 15) * 0.05
        train_acc = 1 - 0.65 * np.exp(-e / 7)
        val_acc = 0.72 - 0.35 * np.exp(-e / 5)
        lines.append(
            f"Epoch {e}/100 - Train Loss: {train_loss:.4f}, Train Acc: {train_acc:.4f} "
            f"Val Loss: {val_loss:.4f}, Val Acc: {val_acc:.4f}" + (" *" if e < 16 else "")
        )
    return "\n".join(lines) + "\n"


def test_a_user_s_own_run_is_summarised_from_its_printed_lines_and_overfitting_found(project):
    logs = project / "my_run"
    logs.mkdir()
    (logs / "train.log").write_text("loading data...\n" + seed_001_log())
    s = ok("summarize_run", {"path": "my_run/train.log"})["summary"]
    assert s["source"].startswith("stdout: ") and s["primary_metric"] == "val_loss"
    overfit = next(f for f in s["findings"] if f["rule"] == "overfitting")
    assert overfit["severity"] == "warn" and overfit["remedy"]
    acc = ok("summarize_run", {"path": "my_run", "primary_metric": "val acc"})["summary"]
    assert acc["primary_metric"] == "val_acc" and acc["primary"]["best"]["value"] == pytest.approx(0.72, abs=0.01)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({}, "Give either run_id"),
        ({"run_id": "x", "path": "y"}, "Give either run_id"),
        ({"path": "../../etc"}, "outside"),
        ({"path": "no/such/folder"}, "does not exist in the project"),
    ],
)
def test_summarize_run_refuses_what_it_cannot_read(project, args, needle):
    assert needle in error("summarize_run", args)


def write_records(path, start: int, count: int, spike_at: int | None = None) -> None:
    rng = np.random.default_rng(start)
    with path.open("a") as fh:
        for step in range(start, start + count):
            loss = 2.0 * np.exp(-step / 20_000) + 0.05 * rng.random()
            if step == spike_at:
                loss *= 40
            fh.write(
                json.dumps({"t": 1e9 + step * 0.01, "step": step, "split": "train", "loss": loss, "lr": 3e-4}) + "\n"
            )


def test_the_summary_stays_the_same_size_however_long_the_run_and_keeps_its_spike(project):
    short, long = project / "short", project / "long"
    short.mkdir()
    long.mkdir()
    write_records(short / "metrics.jsonl", 0, 1_000)
    write_records(long / "metrics.jsonl", 0, 100_000, spike_at=61_234)
    small = ok("summarize_run", {"path": "short"})["summary"]
    big = ok("summarize_run", {"path": "long"})["summary"]
    assert abs(len(json.dumps(big)) - len(json.dumps(small))) < 700  # the findings' evidence, not the points
    spike = next(f for f in big["findings"] if f["rule"] == "spike")
    assert "61234" in spike["evidence"].replace(",", "")
    assert big["primary"]["count"] == 100_000 and big["primary"]["steps_per_second"] == pytest.approx(100, rel=0.01)


def test_a_repeated_summary_reads_only_the_new_bytes(project):
    folder = project / "growing"
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    write_records(metrics, 0, 5_000)
    with loaded(folder) as first:
        assert first.bytes_read == metrics.stat().st_size
    size = metrics.stat().st_size
    write_records(metrics, 5_000, 1_000)
    with metrics.open("a") as fh:
        fh.write('{"step": 6000, "split": "train", "lo')  # a line being written
    with loaded(folder) as again:
        assert again.bytes_read == metrics.read_bytes().rfind(b"\n") + 1 - size
        assert len(again.curves.series["train/loss"]) == 6_000


def test_a_file_s_reader_is_chosen_once_and_an_unfit_file_looked_at_again_only_when_it_changes(project, monkeypatch):
    from mcp_server.curves import readers

    folder = project / "sniffed"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing to plot here\n")
    log = folder / "train.out"
    log.write_text("")  # created before the first line is printed
    sniffed: list[str] = []
    real = readers._sniff
    monkeypatch.setattr(readers, "_sniff", lambda path: sniffed.append(path.name) or real(path))
    with loaded(folder) as first:
        assert not first.curves.series
    assert sorted(sniffed) == ["notes.txt", "train.out"]
    sniffed.clear()
    with loaded(folder) as unchanged:
        assert not unchanged.curves.series
    assert sniffed == []  # neither file changed: no reader tried again
    log.write_text("".join(f"step {i} loss={1 / (i + 1):.4f}\n" for i in range(50)))
    with loaded(folder) as grown:
        assert len(grown.curves.series["loss"]) == 50
    assert sniffed == ["train.out"]
    sniffed.clear()
    with log.open("a") as fh:
        fh.write("step 50 loss=0.0190\n")
    with loaded(folder) as more:
        assert len(more.curves.series["loss"]) == 51
    assert sniffed == []  # its reader was kept


def two_runs(project):
    write_experiment(project, "921-short", "scripted", {"steps": 3})
    write_experiment(project, "922-long", "scripted", {"steps": 8})
    ids = [ok("launch_run", {"experiment": e})["run_id"] for e in ("921", "922")]
    for run_id in ids:
        assert finished(run_id).status == "succeeded"
    return ids


def test_compare_runs_puts_the_best_first_with_what_differs_and_the_baseline(scripted):
    short, long = two_runs(scripted)
    table = ok("compare_runs", {"run_ids": [short, long], "baseline": short})
    assert table["metric"] == "val/acc" and table["direction"] == "max"
    assert [r["run_id"] for r in table["rows"]] == [long, short]
    best, base = table["rows"]
    assert best["best"] == pytest.approx(1 - 0.5 / 8, abs=1e-3) and best["differs"] == {"steps": 8}
    assert best["vs_baseline"] == pytest.approx((1 - 0.5 / 8) - (1 - 0.5 / 3), abs=1e-3)
    assert base["vs_baseline"] == 0 and "interval" in table["same"]
    assert table["note"].startswith(f"best val/acc: {long}") and "baseline" in table["note"]
    loss = ok("compare_runs", {"run_ids": [short, long], "metric": "train/loss", "baseline": "0.2"})
    assert loss["direction"] == "min" and loss["rows"][0]["run_id"] == long and loss["baseline"] == "given"
    assert "neither one of the runs" in error("compare_runs", {"run_ids": [short, long], "baseline": "nan"})
    assert "2-20 distinct run ids" in error("compare_runs", {"run_ids": [short, short]})


def test_plot_run_returns_a_png_and_saves_it_in_the_run_folder(scripted):
    short, _ = two_runs(scripted)
    result = call("plot_run", {"run_id": short})
    assert not result.is_error, result.content[0].text
    text, image = result.content
    png = base64.b64decode(image.data)
    assert image.mime_type == "image/png" and png.startswith(b"\x89PNG")
    saved = result.structured_content["path"]
    assert saved.endswith("plot.png") and Path(saved).read_bytes() == png
    assert result.structured_content["metrics"][0] == "val/acc"
    assert "has no metric 'val/psnr'; it has: train/loss, val/acc" in error(
        "plot_run", {"run_id": short, "metrics": ["val/psnr"]}
    )


def test_trainguard_plot_draws_for_people(scripted):
    short, _ = two_runs(scripted)
    out = subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", "plot", short, "--metric", "train/loss"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert out.strip().endswith("(train/loss)") and "plot.png" in out
