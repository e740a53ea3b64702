"""What pruning saves: the same 8-trial TRM sweep on the CPU, with the median pruner and without.

Usage:
    python bench/bench_sweep.py                  # 8 trials of up to 30 epochs each, twice (~6 min on 2 cores)
    python bench/bench_sweep.py --trials 12 --epochs 10

The trials are seed 001's recipe 1 (30 epochs, early stopping after 10 without a new best) on
2,000 training samples. Both sweeps search the same space (lr on a log range from 1e-5 to 1e-2,
dim 16/32/64) with the random sampler and the same seed, so they try the same 8 configurations in the same order; one
trial at a time, through the real driver, pre-flight, supervisor and trainer. Prints, for each:
wall time from launch to the end, trials complete and pruned, and the best val/acc with its
trial; then the time with pruning as a share of the time without, and the difference of the
best values.

Target (issue 16): with pruning at most 60% of the time without, and its best within 1 point
(0.01) of the best without.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_server.sweeps import api  # noqa: E402


def write_experiment(project: Path, epochs: int) -> None:
    folder = project / "experiments" / "951-trm-bench"
    folder.mkdir(parents=True)
    (folder / "experiment.toml").write_text(
        'trainer = "trm_nav"\ntitle = "TRM sweep bench"\n[args]\n'
        f"num_train = 2000\nnum_test = 300\ndepth = 1\nepochs = {epochs}\npatience = 10\n"
        'device = "cpu"\n'
    )
    (folder / "hypothesis.md").write_text("Pruning stops the low-lr trials early without losing the best one.\n")


def sweep(project: Path, trials: int, prune: dict | str, seed: int) -> tuple[float, api.SweepStatus]:
    t0 = time.monotonic()
    launched = api.launch_sweep(
        "951",
        space={"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "dim": [16, 32, 64]},
        strategy="random",
        max_trials=trials,
        parallel=1,
        prune=prune,
        seed=seed,
        project=project,
    )
    while True:
        st = api.sweep_status(launched.sweep_id, project=project, limit=50)
        if st.status in ("finished", "stopped", "failed"):
            return time.monotonic() - t0, st
        time.sleep(1.0)


def timing(project: Path, sweep_id: str) -> str:
    """Where the time went: the trainers' own time, and the time between one trial's end and the
    next one's start (the driver's poll, the supervisor's start and its final summary)."""
    spans = []
    for folder in (project / "runs").iterdir():
        manifest = folder / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("sweep_id") == sweep_id:
            state = json.loads((folder / "state.json").read_text())
            spans.append((state["started_at"], state["finished_at"]))
    spans.sort()
    training = sum(b - a for a, b in spans)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    return (
        f"    trainers ran {training:.1f} s in all ({training / len(spans):.1f} s a trial); "
        f"between trials {sum(gaps) / max(1, len(gaps)):.1f} s on average"
    )


def report(label: str, seconds: float, st: api.SweepStatus, project: Path) -> None:
    best = st.best
    print(
        f"{label:<14} {seconds:7.1f} s  {st.counts}  best val/acc "
        + (f"{best.best:.4f} (trial {best.trial}: {best.params})" if best and best.best is not None else "none")
    )
    print(timing(project, st.sweep_id))
    for row in sorted(st.table, key=lambda r: r.trial):
        print(f"    #{row.trial} {row.status:<9} {row.best!s:<8} {row.at or '':<9} {row.params}  {row.reason or ''}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30, help="per trial (seed 001's recipe 1: 30, patience 10)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        project = Path(tmp)
        write_experiment(project, args.epochs)
        os.environ["CLAUDE_PROJECT_DIR"] = str(project)
        os.environ.setdefault("TRAINGUARD_PYTHON", sys.executable)
        plain_s, plain = sweep(project, args.trials, "none", args.seed)
        report("no pruning", plain_s, plain, project)
        pruned_s, pruned = sweep(
            project, args.trials, {"kind": "median", "startup_trials": 2, "warmup_epochs": 2}, args.seed
        )
        report("median pruner", pruned_s, pruned, project)
    share = pruned_s / plain_s
    gap = (plain.best.best if plain.best else 0.0) - (pruned.best.best if pruned.best else 0.0)
    print(
        f"pruning took {share:.0%} of the time without (target at most 60%): "
        f"{'met' if share <= 0.60 else 'NOT met'}; best {gap:+.4f} below (target within 0.01): "
        f"{'met' if gap <= 0.01 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
