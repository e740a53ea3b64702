"""The watchdog's rules on real metrics files, with the clock passed in."""

import json
import math

from mcp_server.watchdog import Watchdog, WatchdogConfig


def write(path, *records, newline=True):
    with path.open("a") as fh:
        for r in records:
            fh.write(json.dumps(r) + ("\n" if newline else ""))


def test_a_non_finite_loss_fires_once_per_metric(tmp_path):
    path = tmp_path / "m.jsonl"
    dog = Watchdog(WatchdogConfig(), path, "val/acc", now=0.0)
    write(path, {"step": 1, "split": "train", "loss": 0.5}, {"step": 1, "split": "val", "acc": 0.3})
    assert dog.poll(now=1.0) == []
    write(path, {"step": 2, "split": "train", "loss": "nan", "lr": "nan"}, {"step": 3, "split": "train", "loss": "inf"})
    events = dog.poll(now=2.0)
    assert [(e["kind"], e["action"]) for e in events] == [("nonfinite", "stop")]
    assert events[0]["detail"] == "train/loss is nan at step 2"  # lr is not a loss: not watched
    write(path, {"step": 4, "split": "val", "acc": math.inf})
    assert [e["detail"] for e in dog.poll(now=3.0)] == ["val/acc is inf at step 4"]  # the primary metric


def test_a_torn_line_waits_for_its_end(tmp_path):
    path = tmp_path / "m.jsonl"
    dog = Watchdog(WatchdogConfig(), path, "val/acc", now=0.0)
    path.write_text('{"step": 1, "split": "train", "loss": "na')
    assert dog.poll(now=1.0) == []
    with path.open("a") as fh:
        fh.write('n"}\n')
    assert [e["kind"] for e in dog.poll(now=2.0)] == ["nonfinite"]


def test_a_stall_is_measured_against_the_usual_interval(tmp_path):
    path = tmp_path / "m.jsonl"
    config = WatchdogConfig(stall="stop", stall_factor=5, stall_min_s=10, startup_s=100)
    dog = Watchdog(config, path, "val/acc", now=0.0)
    assert dog.poll(now=99.0) == []  # before the first metric, startup_s applies
    for t in range(1, 11):  # a metric every 4 s
        write(path, {"step": t, "split": "train", "loss": 1.0 / t})
        assert dog.poll(now=100.0 + 4 * t) == []
    assert dog.poll(now=140.0 + 19) == []  # 19 s of silence < 5 x 4 s
    events = dog.poll(now=140.0 + 21)
    assert [(e["kind"], e["action"]) for e in events] == [("stall", "stop")]
    assert "usual interval 4.0 s" in events[0]["detail"]
    assert dog.poll(now=200.0) == []  # fires once until metrics come back
    write(path, {"step": 11, "split": "train", "loss": 0.1})
    assert dog.poll(now=201.0) == []


def test_no_metric_at_all_is_a_stall_after_startup(tmp_path):
    dog = Watchdog(WatchdogConfig(startup_s=30), tmp_path / "never.jsonl", "val/acc", now=0.0)
    assert dog.poll(now=29.0) == []
    assert [e["detail"] for e in dog.poll(now=31.0)] == ["no metric since the start for 31 s (limit 30 s)"]


def test_gpu_memory_and_temperature_limits(tmp_path):
    dog = Watchdog(WatchdogConfig(gpu_memory_gib=10, gpu_memory="stop", temperature_c=85), tmp_path / "m", "x")
    assert dog.check_gpu(9 * 2**30, 80, "GPU 0") == []
    events = dog.check_gpu(11 * 2**30, 88, "GPU 0")
    assert [(e["kind"], e["action"]) for e in events] == [("gpu_memory", "stop"), ("temperature", "warn")]
    assert dog.check_gpu(12 * 2**30, 90, "GPU 0") == []  # each fires once
    off = Watchdog(WatchdogConfig(temperature="off"), tmp_path / "m", "x")
    assert off.check_gpu(None, 99, "GPU 0") == []


def test_a_time_budget_fires_once(tmp_path):
    dog = Watchdog(WatchdogConfig(max_runtime_s=60), tmp_path / "m.jsonl", "x", now=0.0)
    assert dog.poll(now=59.0) == []
    events = dog.poll(now=61.0)
    assert [(e["kind"], e["action"]) for e in events] == [("timeout", "stop")]
    assert events[0]["detail"] == "ran 61 s, past its budget of 60 s"
    assert dog.poll(now=120.0) == []


def test_every_spelling_the_summary_calls_non_finite_trips_the_watchdog(tmp_path):
    """One vocabulary (curves.names): "+inf" is a finding in the summary, so it stops the run too;
    the primary metric is matched however it is spelt ("val_acc" for "val/acc")."""
    from mcp_server.curves.names import NONFINITE

    for i, word in enumerate(NONFINITE):
        path = tmp_path / f"m{i}.jsonl"
        dog = Watchdog(WatchdogConfig(), path, "val/acc", now=0.0)
        write(path, {"step": 1, "train_loss": word}, {"step": 1, "val_acc": word})
        assert [e["detail"] for e in dog.poll(now=1.0)] == [
            f"train_loss is {word} at step 1",
            f"val_acc is {word} at step 1",
        ], word
