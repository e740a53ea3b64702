import json

from mcp_server.metrics import direction_of, summarize_file


def write_lines(path, objs, torn_tail: str = ""):
    with path.open("w") as fh:
        for obj in objs:
            fh.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        fh.write(torn_tail)


def epoch_records(accs, losses):
    out = [{"t": 0, "event": "start", "config": {}}]
    for i, (a, loss) in enumerate(zip(accs, losses, strict=True), start=1):
        out.append({"t": i, "step": i * 10, "epoch": i, "split": "train", "loss": loss})
        out.append({"t": i, "step": i * 10, "epoch": i, "split": "val", "acc": a})
    return out


def test_best_validation_accuracy_and_its_epoch(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, epoch_records([0.3, 0.8, 0.9, 0.85], [1.5, 0.9, 0.5, 0.4]) + [{"event": "done", "reason": "x"}])
    s = summarize_file(path, "val/acc", "max")
    assert s.primary.best.value == 0.9 and s.primary.best.epoch == 3 and s.primary.best.step == 30
    assert s.primary.first.value == 0.3 and s.primary.last.value == 0.85
    assert "best val/acc 0.9 at epoch 3" in s.headline and "ended: x" in s.headline
    loss = next(m for m in s.metrics if m.name == "train/loss")
    assert loss.direction == "min" and loss.best.value == 0.4 and loss.trend.startswith("improved 1.5 -> 0.4")
    assert "none better in the 1 points since" in s.primary.trend


def test_torn_last_line_and_garbage_lines_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    torn = '{"step": 99, "split": "val", "ac'
    write_lines(path, epoch_records([0.5], [1.0]) + ["not json", "[1, 2]"], torn_tail=torn)
    s = summarize_file(path, "val/acc", "max")
    assert s.records == 2 and s.skipped_lines == 2 and s.primary.count == 1


def test_non_finite_values_are_reported_not_hidden(tmp_path):
    path = tmp_path / "m.jsonl"
    recs = epoch_records([0.2, 0.3, 0.3], [1.0, 0.9, 0.8])
    recs[5]["loss"] = "nan"
    write_lines(path, recs)
    loss = next(m for m in summarize_file(path, "val/acc", "max").metrics if m.name == "train/loss")
    assert loss.nonfinite_count == 1 and "NON-FINITE from epoch 3" in loss.trend
    assert loss.last.value is None and loss.best.value == 0.9


def test_missing_file_is_an_empty_summary(tmp_path):
    s = summarize_file(tmp_path / "none.jsonl", "val/acc", "max")
    assert s.records == 0 and s.primary is None and s.headline == "no metrics logged yet"


def test_flat_and_worsening_trends(tmp_path):
    path = tmp_path / "m.jsonl"
    write_lines(path, epoch_records([0.5, 0.5, 0.5], [1.0, 1.5, 2.0]))
    s = summarize_file(path, "val/acc", "max")
    assert s.primary.trend.startswith("flat")
    assert next(m for m in s.metrics if m.name == "train/loss").trend.startswith("worsened")


def test_direction_is_guessed_from_the_name():
    assert direction_of("val/acc") == "max" and direction_of("psnr_db") == "max"
    assert direction_of("train/loss") == "min" and direction_of("lr") is None
