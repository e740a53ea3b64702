"""Seed 001's Recipe 1, measured: validation accuracy against wall time and CPU time.

Usage:
    python bench/bench_trm.py                       # Recipe 1 with and without --augment, seed 42: ~6 min on 2 cores
    python bench/bench_trm.py --seeds 42 7 1 --modes plain
    python bench/bench_trm.py --threshold 0.9 --extra --aux-weight 0   # pass more flags to the trainer

Target: Recipe 1 (5,000 train / 500 test states, dim 64, depth 2, dropout 0.1, 30 epochs,
patience 10, read from experiments/001-trm-fast-dev/experiment.toml) reaches at least 90%
validation accuracy within 2 minutes of wall time on a 2-core CPU; with --augment, more.

Each run is a real subprocess of trainers/trm_nav.py on the CPU. While it runs, this script
polls its metrics stream and the process's CPU time (/proc, Linux), so it can say when the
threshold was first crossed in both clocks. On a machine shared with other work the wall
clock stretches and the CPU time does not: report both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "trainers" / "trm_nav.py"
RECIPE = ROOT / "experiments" / "001-trm-fast-dev" / "experiment.toml"


def recipe_flags() -> list[str]:
    """Experiment 001's [args] as trainer flags (the spec maps snake_case names to --kebab-case)."""
    args = tomllib.loads(RECIPE.read_text())["args"]
    return [part for name, value in args.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from /proc, or None once it is gone (or off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def val_records(path: Path) -> list[dict]:
    """The complete val lines of a metrics stream (a torn last line is skipped)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [r for r in map(json.loads, lines) if r.get("split") == "val"]


def run_once(flags: list[str], threshold: float, workdir: Path) -> dict:
    """Trains once; returns wall/CPU seconds in total and at the first val acc >= threshold, and the best."""
    metrics = workdir / "metrics.jsonl"
    env = {**os.environ, "TRAINGUARD_METRICS": str(metrics)}
    env.pop("TRAINGUARD_RUN_DIR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), *flags, "--device", "cpu", "--checkpoint-dir", str(workdir / "ckpt")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    hit_wall = hit_cpu = hit_epoch = None
    last_cpu = 0.0
    while True:
        cpu = cpu_seconds(proc.pid)
        last_cpu = cpu if cpu is not None else last_cpu
        if hit_wall is None:
            hit = next((r for r in val_records(metrics) if r["acc"] >= threshold), None)
            if hit is not None:  # the CPU clock is sampled here, up to one poll after the record
                hit_wall, hit_cpu, hit_epoch = hit["t"] - start, last_cpu, hit["epoch"]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    err = proc.communicate()[1]
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"trainer exited with {proc.returncode}:\n{err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    vals = val_records(metrics)
    best = max(vals, key=lambda r: r["acc"])
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "best_acc": best["acc"],
        "best_epoch": best["epoch"],
        "epochs": len(vals),
        "hit_wall_s": hit_wall,
        "hit_cpu_s": hit_cpu,
        "hit_epoch": hit_epoch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed and mode")
    p.add_argument("--modes", nargs="+", choices=("plain", "augment"), default=["plain", "augment"])
    p.add_argument("--threshold", type=float, default=0.90, help="val acc whose first crossing is timed")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further trainer flags, e.g. --aux-weight 0")
    args = p.parse_args()

    base = recipe_flags()
    print(f"Recipe 1 flags: {' '.join(base)}; device cpu; torch threads: default; load average {os.getloadavg()}")
    header = (
        f"{'mode':8} {'seed':>5} {'wall s':>7} {'cpu s':>7} {'best val':>8} {'@ep':>4} {'epochs':>6} "
        f"{'>=' + format(args.threshold, '.2f') + ' at':>10} {'wall s':>7} {'cpu s':>7}"
    )
    print(header)
    print("-" * len(header))
    for mode in args.modes:
        for seed in args.seeds:
            flags = [*base, "--seed", str(seed), *(["--augment"] if mode == "augment" else []), *args.extra]
            with tempfile.TemporaryDirectory(prefix="bench_trm_") as tmp:
                r = run_once(flags, args.threshold, Path(tmp))
            hit = (
                f"{'ep ' + str(r['hit_epoch']):>10} {r['hit_wall_s']:7.1f} {r['hit_cpu_s']:7.1f}"
                if r["hit_epoch"] is not None
                else f"{'never':>10} {'-':>7} {'-':>7}"
            )
            print(
                f"{mode:8} {seed:5d} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {r['best_acc']:8.3f} {r['best_epoch']:4d} "
                f"{r['epochs']:6d} {hit}",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
