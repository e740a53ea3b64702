"""GPU monitoring cost: warm `gpu_status` latency, and 1 Hz sampling beside a training run.

Usage:
    python bench/bench_gpu.py             # about 1 minute
    python bench/bench_gpu.py --calls 500

1. Latency: `gpu.Sampler.sample()` with the backend opened once (what gpu_status, gpu_watch and
   the supervisor's watchdog do) and `gpu_status` through an in-memory MCP client, each called
   `--calls` times after a warm-up; p50 / p95 / max in ms. Target: p50 <= 20 ms with one GPU.
2. Sampling cost: a bundled TRM training run (one CPU thread) timed alone and with a thread
   sampling `Sampler.sample` once a second, each twice, interleaved; the throughput ratio. Target:
   at most 1% slower.

On a machine without a GPU both measure the NoGpu path (host figures only); run it on the
device machine for the NVML figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mcp_server import gpu  # noqa: E402

TRM = [
    sys.executable,
    str(ROOT / "trainers" / "trm_nav.py"),
    "--epochs",
    "4",
    "--patience",
    "100",
    "--dim",
    "32",
    "--depth",
    "2",
    "--num-train",
    "3000",
    "--num-test",
    "200",
    "--device",
    "cpu",
]


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    return (
        f"p50 {statistics.median(ms):6.2f} ms  p95 {ms[int(0.95 * (len(ms) - 1))]:6.2f} ms  "
        f"max {ms[-1]:6.2f} ms  (n={len(ms)})"
    )


def latency(calls: int) -> None:
    sampler = gpu.Sampler(Path(tempfile.mkdtemp()))  # what every tool and the watchdog use
    print(f"backend: {sampler.backend.name} ({len(sampler.backend.devices())} GPU(s))")
    for _ in range(5):
        sampler.sample()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sampler.sample()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"Sampler.sample, warm backend: {percentiles(times)}")

    from mcp import Client

    from mcp_server.server import mcp

    async def over_mcp() -> list[float]:
        out = []
        async with Client(mcp) as client:
            for i in range(calls + 5):
                t0 = time.perf_counter()
                await client.call_tool("gpu_status", {})
                if i >= 5:
                    out.append((time.perf_counter() - t0) * 1000)
        return out

    print(f"gpu_status over MCP (memory): {percentiles(anyio.run(over_mcp))}")


def trm_seconds(sample: bool) -> float:
    stop = threading.Event()
    sampler = gpu.Sampler(Path(tempfile.mkdtemp()))  # what every tool and the watchdog use

    def every_second() -> None:
        while not stop.wait(1.0):
            sampler.sample()

    thread = threading.Thread(target=every_second, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        if sample:
            thread.start()
        t0 = time.perf_counter()
        subprocess.run(
            [*TRM, "--checkpoint-dir", tmp], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        elapsed = time.perf_counter() - t0
        stop.set()
    return elapsed


def sampling_cost() -> None:
    alone, sampled = [], []
    for _ in range(2):
        alone.append(trm_seconds(False))
        sampled.append(trm_seconds(True))
    a, s = min(alone), min(sampled)
    print(
        f"TRM run alone {a:.2f} s, with 1 Hz sampling {s:.2f} s: {s / a - 1:+.1%} "
        f"(runs: alone {', '.join(f'{x:.2f}' for x in alone)}; sampled {', '.join(f'{x:.2f}' for x in sampled)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    latency(args.calls)
    sampling_cost()
    return 0


if __name__ == "__main__":
    sys.exit(main())
