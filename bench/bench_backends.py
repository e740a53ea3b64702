"""The run backends, measured: Slurm's submit-to-running latency and status-poll cost, and
torchrun's 2-process against 1-process throughput for TRM on the CPU.

Usage:
    python bench/bench_backends.py              # about 3 minutes; as root (it starts a Slurm)
    python bench/bench_backends.py --skip-slurm

1. Slurm (a real single-node cluster from scripts/slurm-cluster, unless SLURM_CONF names one):
   - submit to running: `launch_run(backend="slurm")` of a tiny scripted trainer until
     `run_status` says running, the median of 5;
   - one status poll for 50 jobs: the backend's batched `squeue` call (JobTable) for 50 held
     jobs, against 50 calls of `squeue -j ID`, the median of 5 each.
2. torchrun: TRM navigation (seed 001's Recipe 1 sizes, 3 epochs) as one process and as 2 gloo
   ranks on the CPU, samples per second from its metrics (the mean of epochs 2-3), each with one
   thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from conftest import SCRIPTED_SPEC, write_experiment  # noqa: E402


def start_cluster(where: Path) -> str:
    out = subprocess.run(
        [str(REPO / "scripts" / "slurm-cluster"), "start", str(where)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split("=", 1)[1]


def slurm_figures(tmp: Path) -> None:
    started_here = "SLURM_CONF" not in os.environ
    if started_here:
        os.environ["SLURM_CONF"] = start_cluster(tmp / "slurm")
    project = tmp / "project"
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "scripts").mkdir()
    for name in ("scripted_trainer.py",):
        (project / "scripts" / name).write_text((REPO / "tests" / "fixtures" / name).read_text())
    (project / "scripts" / "trainkit.py").write_text((REPO / "trainers" / "trainkit.py").read_text())
    (project / "experiments" / "trainers" / "scripted.toml").write_text(SCRIPTED_SPEC)
    write_experiment(project, "951-quick", "scripted", {"steps": 200, "interval": 0.05})
    os.environ["CLAUDE_PROJECT_DIR"] = str(project)
    from mcp_server import runs
    from mcp_server.backends import slurm

    try:
        latencies = []
        for _ in range(5):
            t0 = time.perf_counter()
            launched = runs.launch("951", backend="slurm", resources={"time": "5"})
            while runs.status(launched.run_id).status != "running":
                time.sleep(0.05)
            latencies.append(time.perf_counter() - t0)
            runs.stop(launched.run_id, grace_s=10)
        print(
            f"slurm: launch_run to running:             {statistics.median(latencies):.2f} s "
            f"(median of 5; min {min(latencies):.2f})"
        )

        held = []
        for _ in range(50):
            out = subprocess.run(
                ["sbatch", "--parsable", "--hold", "--time=1", "--wrap=true"],
                capture_output=True,
                text=True,
                check=True,
            )
            held.append(out.stdout.strip().split(";")[0])
        table = slurm.JobTable()
        batched, single = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            found = table._query(held)
            batched.append(time.perf_counter() - t0)
            assert len(found) == 50
            t0 = time.perf_counter()
            for job in held:
                subprocess.run(
                    ["squeue", "--noheader", f"--jobs={job}", "--format=%i|%T|%r"], capture_output=True, check=False
                )
            single.append(time.perf_counter() - t0)
        print(
            f"slurm: one status poll of 50 jobs:        {statistics.median(batched) * 1e3:.0f} ms batched "
            f"(one squeue), {statistics.median(single) * 1e3:.0f} ms as 50 calls"
        )
        subprocess.run(["scancel", *held], check=False)
    finally:
        if started_here:
            subprocess.run([str(REPO / "scripts" / "slurm-cluster"), "stop", str(tmp / "slurm")], check=False)


def trm_sps(out: Path, nproc: int) -> float:
    metrics = out / "metrics.jsonl"
    flags = [
        "--epochs",
        "3",
        "--patience",
        "3",
        "--num-train",
        "5000",
        "--num-test",
        "500",
        "--dim",
        "64",
        "--depth",
        "2",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--checkpoint-dir",
        str(out / "ckpt"),
    ]
    script = str(REPO / "trainers" / "trm_nav.py")
    cmd = (
        [sys.executable, script]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script]
    )
    subprocess.run(
        [*cmd, *flags],
        env={**os.environ, "TRAINGUARD_METRICS": str(metrics), "OMP_NUM_THREADS": "1"},
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sps = [r["sps"] for r in map(json.loads, metrics.read_text().splitlines()) if r.get("split") == "train"]
    return statistics.mean(sps[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-slurm", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_slurm:
            slurm_figures(tmp)
        one, two = trm_sps(tmp / "one", 1), trm_sps(tmp / "two", 2)
        print(f"torchrun: TRM on the CPU, 1 process:      {one:8.0f} samples/s")
        print(
            f"torchrun: TRM on the CPU, 2 gloo ranks:   {two:8.0f} samples/s ({two / one:.2f}x, {os.cpu_count()} cores)"
        )


if __name__ == "__main__":
    main()
