"""The TRM navigation trainer, run for real as a subprocess, and the data it learns from."""

from __future__ import annotations

import heapq
import json
import re
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_harness import load_pt, read_records, signal_when, spawn

from trainers import trm_dataset, trm_nav

TRAINER = Path(trm_nav.__file__).resolve()
DATASET = Path(trm_dataset.__file__).resolve()
TINY = ["--num-train", "300", "--num-test", "60", "--dim", "16", "--depth", "1", "--device", "cpu"]
EPOCH_LINE = re.compile(
    r"^Epoch (\d+)/(\d+) - Train Loss: \d+\.\d{4}, Train Acc: [01]\.\d{4} "
    r"Val Loss: \d+\.\d{4}, Val Acc: [01]\.\d{4}( \*)?$"
)
CHECKPOINT_KEYS = {"epoch", "model_state_dict", "optimizer_state_dict", "val_acc", "val_loss", "config"}
CHECKPOINT_KEYS |= {"step", "best_val_acc", "best_epoch", "history", "rng", "data"}  # what --resume needs


def _launch(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    metrics = tmp_path / "metrics.jsonl"
    ckpt = tmp_path / "ckpt"
    return spawn(TRAINER, [*TINY, "--checkpoint-dir", str(ckpt), *args], metrics), metrics, ckpt


def test_tiny_run_writes_checkpoints_history_metrics_and_epoch_lines(tmp_path):
    proc, metrics, ckpt = _launch(tmp_path, "--epochs", "2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err

    epoch_lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert [EPOCH_LINE.match(line).group(1, 2) for line in epoch_lines] == [("1", "2"), ("2", "2")]
    assert epoch_lines[0].endswith(" *")  # the first epoch is always a new best

    best = load_pt(ckpt / "best.pt")
    assert set(best) == CHECKPOINT_KEYS
    assert best["config"] == {"grid_size": 8, "dim": 16, "depth": 1, "dropout": 0.1}
    model = trm_nav.create_model(**best["config"])
    model.load_state_dict(best["model_state_dict"])
    assert set(load_pt(ckpt / "last.pt")) == CHECKPOINT_KEYS and load_pt(ckpt / "last.pt")["epoch"] == 2

    history = json.loads((ckpt / "history.json").read_text())
    assert {k: len(v) for k, v in history.items()} == dict.fromkeys(
        ("train_loss", "train_acc", "val_loss", "val_acc", "lr"), 2
    )
    assert max(history["val_acc"]) == pytest.approx(best["val_acc"])

    records = read_records(metrics)
    assert records[0]["event"] == "start" and records[0]["config"]["dim"] == 16
    for epoch in (1, 2):
        train = [r for r in records if r.get("split") == "train" and r["epoch"] == epoch]
        val = [r for r in records if r.get("split") == "val" and r["epoch"] == epoch]
        assert len(train) == len(val) == 1
        assert {"t", "step", "epoch", "split", "loss", "aux_loss", "acc", "lr", "sps"} == set(train[0])
        assert {"t", "step", "epoch", "split", "loss", "acc"} == set(val[0])
        assert train[0]["step"] == val[0]["step"] == epoch * 5  # ceil(300 / 64) optimizer steps per epoch
    kinds = [r["kind"] for r in records if r.get("event") == "checkpoint"]
    assert kinds.count("last") == 2 and "best" in kinds
    done = records[-1]
    assert done["event"] == "done" and done["reason"] == "completed"
    assert done["best_val_acc"] == pytest.approx(best["val_acc"]) and done["best_epoch"] == best["epoch"]


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_stop_signal_saves_last_checkpoint_then_exits_with_signal_code(tmp_path, signum, exit_code):
    proc, metrics, ckpt = _launch(tmp_path, "--num-train", "2000", "--epochs", "1000", "--patience", "0")
    _, err = signal_when(proc, metrics, lambda r: r.get("split") == "val", "val record", signum)
    assert proc.returncode == exit_code, err

    last = load_pt(ckpt / "last.pt")
    assert set(last) == CHECKPOINT_KEYS and last["epoch"] >= 1
    records = read_records(metrics)
    assert records[-1]["event"] == "done" and records[-1]["reason"] == "stopped"
    assert records[-2]["event"] == "checkpoint" and records[-2]["kind"] == "last"
    assert not [p.name for p in ckpt.iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_crash_is_recorded_as_an_error_event_and_a_nonzero_exit(tmp_path):
    proc, metrics, _ = _launch(tmp_path, "--device", "cuda")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "ValueError" in err
    error = read_records(metrics)[-1]
    assert error["event"] == "error" and error["type"] == "ValueError" and "no CUDA" in error["message"]


# ---------------------------------------------------------------------------- labels


def _bfs_distances(walls: np.ndarray, goal: tuple[int, int]) -> dict[tuple[int, int], int]:
    n = walls.shape[0]
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in trm_nav.MOVES:
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and not walls[nxt] and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def _astar_length(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> int:
    """A textbook A* with the Manhattan heuristic: an oracle independent of the trainer's search."""
    n = walls.shape[0]

    def h(p: tuple[int, int]) -> int:
        return abs(p[0] - goal[0]) + abs(p[1] - goal[1])

    frontier, best = [(h(start), 0, start)], {start: 0}
    while frontier:
        _, g, cell = heapq.heappop(frontier)
        if cell == goal:
            return g
        for dr, dc in trm_nav.MOVES:
            nxt = (cell[0] + dr, cell[1] + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and not walls[nxt] and g + 1 < best.get(nxt, 1 << 30):
                best[nxt] = g + 1
                heapq.heappush(frontier, (g + 1 + h(nxt), g + 1, nxt))
    raise AssertionError("goal unreachable")


def _decode(tokens: np.ndarray, n: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    grid = tokens.reshape(n, n)
    agent = tuple(int(v) for v in np.argwhere(grid == trm_nav.AGENT)[0])
    goals = np.argwhere(grid == trm_nav.GOAL)
    goal = tuple(int(v) for v in goals[0]) if len(goals) else agent  # at the goal, the agent covers it
    return grid == trm_nav.WALL, agent, goal


def test_every_label_is_the_first_move_in_fixed_order_that_gets_closer():
    n = 8
    tokens, labels, policy, _ = trm_dataset.generate_samples(400, n, np.random.default_rng(0), (0.2, 0.3), views=8)
    assert tokens.shape == (8, 400, n * n) and labels.shape == (8, 400) and policy.shape == (8, 400, n * n)
    assert set(np.unique(labels[0])) == set(range(5))
    for x, y, moves in zip(tokens.reshape(-1, n * n), labels.reshape(-1), policy.reshape(-1, n * n), strict=True):
        walls, agent, goal = _decode(x, n)
        dist = _bfs_distances(walls, goal)
        closer = [
            a
            for a, (dr, dc) in enumerate(trm_nav.MOVES)
            if dist.get((agent[0] + dr, agent[1] + dc), -1) == dist[agent] - 1
        ]
        assert y == (closer[0] if agent != goal else trm_nav.STAY)
        # The auxiliary target: the agent's own cell carries the label, walls and cut-off cells -1.
        assert moves[agent[0] * n + agent[1]] == y
        assert {int(m) for c, m in enumerate(moves) if divmod(c, n) not in dist} == {-1}


def test_following_the_labels_reaches_the_goal_in_the_astar_path_length():
    n = 8
    tokens, labels, _, _ = trm_dataset.generate_samples(400, n, np.random.default_rng(1), (0.2, 0.3))
    tokens, labels = tokens[0], labels[0]
    starts = [0] + [i + 1 for i in np.flatnonzero(labels == trm_nav.STAY)[:-1]]
    assert len(starts) > 20
    for start in starts:
        walls, agent, goal = _decode(tokens[start], n)
        moves = 0
        while labels[start + moves] != trm_nav.STAY:
            dr, dc = trm_nav.MOVES[labels[start + moves]]
            agent = (agent[0] + dr, agent[1] + dc)
            moves += 1
            assert _decode(tokens[start + moves], n)[1] == agent  # the next sample is the state we moved to
        assert agent == goal
        assert moves == _astar_length(walls, _decode(tokens[start], n)[1], goal)


def _moved(new_cell: np.ndarray, n: int, cell: tuple[int, int], action: int) -> int:
    """The action that, in a transformed grid, makes the move that ``action`` made from ``cell`` in the original."""
    dr, dc = trm_nav.MOVES[action]
    src = divmod(int(new_cell[cell[0] * n + cell[1]]), n)
    dst = divmod(int(new_cell[(cell[0] + dr) * n + cell[1] + dc]), n)
    return trm_nav.MOVES.index((dst[0] - src[0], dst[1] - src[1]))


def test_augmentation_maps_grid_and_action_consistently():
    n = 8
    tokens, labels, _, _ = trm_dataset.generate_samples(300, n, np.random.default_rng(2), (0.2, 0.3), views=8)
    perms = trm_dataset.dihedral_perms(n)
    assert len({p.tobytes() for p in perms}) == 8 and (perms[0] == np.arange(n * n)).all()
    unique = relabelled = 0
    for v, perm in enumerate(perms):
        np.testing.assert_array_equal(tokens[v], tokens[0][:, perm])  # view v is view 0's grid, transformed
        new_cell = np.argsort(perm)  # original flat cell -> transformed flat cell
        for x, y, y_v in zip(tokens[0], labels[0], labels[v], strict=True):
            walls, agent, goal = _decode(x, n)
            if agent == goal:
                assert y_v == trm_nav.STAY
                continue
            dist = _bfs_distances(walls, goal)
            optimal = [
                a
                for a, (dr, dc) in enumerate(trm_nav.MOVES)
                if dist.get((agent[0] + dr, agent[1] + dc), -1) == dist[agent] - 1
            ]
            # The view's label is the first of the transformed optimal moves in the fixed order.
            assert y_v == min(_moved(new_cell, n, agent, a) for a in optimal)
            if len(optimal) == 1:  # a unique move: rotating the state rotates its label
                unique += 1
            elif y_v != _moved(new_cell, n, agent, y):  # a tie: mapping the label would break the tie-break rule
                relabelled += 1
    assert unique > 500 and relabelled > 50  # both cases occur, so both rules were exercised


def test_dataset_command_writes_loadable_files_with_the_right_counts(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, str(DATASET), "--num-train", "40", "--num-test", "10", "--augment"]
    subprocess.run(
        [*cmd, "--output-dir", str(out), "--seed", "5"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert sorted(p.name for p in out.iterdir()) == ["test.pt", "train.pt"]  # no temporary files left
    train, test = trm_dataset.load_split(out / "train.pt"), trm_dataset.load_split(out / "test.pt")
    assert train["tokens"].shape == (8 * 40, 64) and train["labels"].shape == (320,)
    assert train["policy"].shape == (320, 64) and test["tokens"].shape == (10, 64)
    meta = train["meta"]
    assert (meta["split"], meta["grid_size"], meta["seed"], meta["augment"]) == ("train", 8, 5, True)
    assert (meta["num_samples"], meta["views"], meta["count"]) == (40, 8, 320)
    assert (test["meta"]["split"], test["meta"]["views"], test["meta"]["count"]) == ("test", 1, 10)
    # View 0 and the test file are what the trainer generates in-process from the same flags.
    plain_train, plain_test = trm_dataset.make_datasets(40, 10, seed=5)
    assert torch.equal(train["tokens"][:40], plain_train["tokens"])
    assert torch.equal(test["tokens"], plain_test["tokens"])


def test_datasets_are_deterministic_and_test_grids_are_unseen_in_training():
    first, again = trm_dataset.make_datasets(200, 50, seed=3), trm_dataset.make_datasets(200, 50, seed=3)
    for split_a, split_b in zip(first, again, strict=True):
        assert split_a["meta"] == split_b["meta"]
        for key in ("tokens", "labels", "policy"):
            assert torch.equal(split_a[key], split_b[key])
    other = trm_dataset.make_datasets(200, 50, seed=4)[0]
    assert not torch.equal(first[0]["tokens"], other["tokens"])
    train, test = first
    layouts = {(x == trm_nav.WALL).numpy().tobytes() for x in train["tokens"]}
    assert not layouts & {(x == trm_nav.WALL).numpy().tobytes() for x in test["tokens"]}


def test_missing_or_mismatched_data_files_are_refused_with_the_fix(tmp_path):
    trm_dataset.main(["--num-train", "30", "--num-test", "10", "--output-dir", str(tmp_path)])
    train, val = str(tmp_path / "train.pt"), str(tmp_path / "test.pt")
    with pytest.raises(FileNotFoundError, match=r"--train-path .*nope.pt does not exist.*trainers/trm_dataset.py"):
        trm_nav.load_data(trm_nav.parse_args(["--train-path", str(tmp_path / "nope.pt"), "--val-path", val]))
    with pytest.raises(ValueError, match="occur in"):  # validation grids must stay unseen in training
        trm_nav.load_data(trm_nav.parse_args(["--train-path", train, "--val-path", train]))
    with pytest.raises(ValueError, match="written without it"):
        trm_nav.load_data(trm_nav.parse_args(["--train-path", train, "--val-path", val, "--augment"]))
    with pytest.raises(SystemExit):
        trm_nav.parse_args(["--train-path", train])  # one without the other


def _history(ckpt: Path) -> dict:
    return json.loads((ckpt / "history.json").read_text())


def test_training_from_train_and_val_paths_uses_the_files(tmp_path):
    trm_dataset.main(["--num-train", "100", "--num-test", "20", "--augment", "--output-dir", str(tmp_path / "d")])
    files = ["--train-path", str(tmp_path / "d" / "train.pt"), "--val-path", str(tmp_path / "d" / "test.pt")]
    proc, metrics, ckpt = _launch(tmp_path, *files, "--epochs", "1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Data: 100 train states x 8 views / 20 test, from " in out  # not TINY's 300 / 60: the files decide
    assert len([r for r in read_records(metrics) if r.get("split") == "val"]) == len(_history(ckpt)["val_acc"]) == 1
    assert load_pt(ckpt / "last.pt")["data"]["train"]["views"] == 8


def test_resume_continues_from_the_saved_epoch_as_if_never_stopped(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINGUARD_METRICS", raising=False)  # for the in-process run at the end
    const = ["--lr-schedule", "constant"]  # a cosine's shape depends on --epochs, which differs between the halves
    proc, _, ckpt = _launch(tmp_path, *const, "--epochs", "2")
    assert proc.communicate(timeout=120) and proc.returncode == 0
    resumed = tmp_path / "resumed"
    proc, metrics, _ = _launch(resumed, *const, "--epochs", "4", "--resume", str(ckpt / "last.pt"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Resumed from " in out and "epoch 2, step 10" in out
    epochs = [EPOCH_LINE.match(line).group(1, 2) for line in out.splitlines() if line.startswith("Epoch ")]
    assert epochs == [("3", "4"), ("4", "4")]  # numbering continues at epoch + 1
    assert read_records(metrics)[0]["config"]["resume_epoch"] == 2
    assert [r["step"] for r in read_records(metrics) if r.get("split") == "val"] == [15, 20]  # the lr schedule's clock
    history = _history(resumed / "ckpt")
    assert len(history["val_acc"]) == 4 and history["val_acc"][:2] == _history(ckpt)["val_acc"]
    # Weights, Adam moments and the RNG are all restored, so the result equals an uninterrupted run.
    straight = tmp_path / "straight"
    assert trm_nav.main([*TINY, *const, "--epochs", "4", "--checkpoint-dir", str(straight)]) == 0
    assert _history(straight) == history


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINGUARD_METRICS", raising=False)
    proc, _, ckpt = _launch(tmp_path, "--epochs", "1")
    assert proc.communicate(timeout=120) and proc.returncode == 0
    args = [*TINY, "--dim", "32", "--checkpoint-dir", str(tmp_path / "x"), "--resume", str(ckpt / "last.pt")]
    with pytest.raises(ValueError, match="pass the same --dim"):
        trm_nav.main(args)
    with pytest.raises(FileNotFoundError, match="--resume .* does not exist"):
        trm_nav.main([*args[:-1], str(tmp_path / "missing.pt")])


def test_same_seed_gives_identical_data_and_first_epoch_metrics(tmp_path, monkeypatch):
    def first_epoch(name: str, seed: str) -> tuple[dict, list[dict]]:
        monkeypatch.setenv("TRAINGUARD_METRICS", str(tmp_path / f"{name}.jsonl"))
        assert trm_nav.main([*TINY, "--epochs", "1", "--seed", seed, "--checkpoint-dir", str(tmp_path / name)]) == 0
        logs = [r for r in read_records(tmp_path / f"{name}.jsonl") if "split" in r]
        return _history(tmp_path / name), [{k: v for k, v in r.items() if k not in ("t", "sps")} for r in logs]

    a, b, c = first_epoch("a", "7"), first_epoch("b", "7"), first_epoch("c", "8")
    assert a == b  # every loss and accuracy, to the last bit
    assert a[0]["train_loss"] != c[0]["train_loss"]
    assert torch.equal(
        load_pt(tmp_path / "a" / "last.pt")["model_state_dict"]["head.weight"],
        load_pt(tmp_path / "b" / "last.pt")["model_state_dict"]["head.weight"],
    )


def test_memory_step_runs_one_real_step():
    step = trm_nav.memory_step(["--dim", "16", "--depth", "1", "--num-train", "50", "--num-test", "10"], batch_size=4)
    loss, aux, logits = step()
    assert logits.shape == (4, 5) and torch.isfinite(loss) and aux is not None and torch.isfinite(aux)
