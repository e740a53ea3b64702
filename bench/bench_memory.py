"""Pre-flight's memory estimate against the measured peak, for every bundled trainer at three batch sizes.

Usage:
    python bench/bench_memory.py                # CPU: about 8 minutes on 2 cores
    python bench/bench_memory.py --device cuda  # on a GPU: measured with the CUDA caching allocator
    python bench/bench_memory.py --json         # the rows as JSON

Estimate: what `estimate_memory` reports as tensors (before its context and margin): the step
traced by trainers/memprobe.py at the batch size B and 2B (fake tensors), or, where fake tensors
cannot trace the step, real CPU steps at B/4 and at B (so the estimate at B is a measurement).

Measured, each in a fresh process running two real optimizer steps from scratch:
  cpu   the peak of the bytes held by torch's CPU allocator, from the profiler's memory events
        (every allocation and free the allocator makes, including the kernels' scratch space);
  cuda  torch.cuda.max_memory_allocated, and max_memory_reserved (what the caching allocator
        took from the driver, the figure an OOM is about).

"err" is estimate / measured - 1; the target is |err| <= 15%. The estimate's 10% allocator
margin is there to cover the part of the measured peak that the trace cannot see. "extrap." is
the same fit made at the case's smallest batch size and extrapolated to the others: what the
"largest batch that fits" relies on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINERS = ROOT / "trainers"

# (label, trainer script, flags, three batch sizes) - the bundled experiments' settings and bigger ones.
CASES = [
    (
        "trm_nav 001 (dim 64, depth 2)",
        "trm_nav.py",
        ["--dim", "64", "--depth", "2", "--num-train", "5000"],
        [64, 256, 1024],
    ),
    (
        "trm_nav 006 (dim 256, depth 6)",
        "trm_nav.py",
        ["--dim", "256", "--depth", "6", "--num-train", "20000"],
        [64, 256, 1024],
    ),
    ("autoencoder residual 128px", "autoencoder.py", ["--arch", "residual", "--data-dir", "/nonexistent"], [4, 16, 64]),
    (
        "autoencoder attention 128px",
        "autoencoder.py",
        ["--arch", "attention", "--data-dir", "/nonexistent"],
        [4, 16, 32],
    ),
    ("gauss 002 tile renderer", "gauss_decoder.py", ["--experiment", "2"], [4, 8, 16]),
    ("gauss dense renderer", "gauss_decoder.py", ["--experiment", "2", "--renderer", "dense"], [2, 4, 8]),
    ("gauss 004 fourier + blending", "gauss_decoder.py", ["--experiment", "4"], [2, 4, 8]),
    ("ppo 011 ground_truth", "ppo_gridworld.py", ["--mode", "ground_truth"], [48, 192, 768]),
]

MEASURE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import memprobe, torch
script, device, batch = sys.argv[2], sys.argv[3], int(sys.argv[4])
flags = json.loads(sys.argv[5])
torch.set_num_threads(1)
entry = memprobe.load_entry(__import__("pathlib").Path(script), "memory_step")
if device == "cpu":
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step = entry(flags, batch, "cpu"); step(); step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                     and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes(); peak = max(peak, live)
    out = {"allocated": peak, "reserved": None}
else:
    torch.cuda.init()
    step = entry(flags, batch, device); step(); step()
    torch.cuda.synchronize()
    out = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
print(json.dumps(out))
"""


def measure(script: Path, flags: list[str], batch: int, device: str) -> dict:
    """The real peak in a fresh interpreter (see the module docstring)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(TRAINERS), str(script), device, str(batch), json.dumps(flags)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(script: Path, flags: list[str], batch: int) -> tuple[float, float, str]:
    """(fixed bytes, bytes per sample, method) as estimate_memory fits them from the probe for `batch`."""
    out = subprocess.run(
        [
            sys.executable,
            str(TRAINERS / "memprobe.py"),
            str(script),
            "--batch-sizes",
            str(batch),
            str(2 * batch),
            "--",
            *flags,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (b1, p1), (b2, p2) = sorted((int(b), p) for b, p in result["peaks"].items())
    per_sample = (p2 - p1) / (b2 - b1)
    return p1 - per_sample * b1, per_sample, result["method"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to measure on a GPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.json:
        print(
            f"{'case':<32} {'batch':>6} {'method':>8} {'estimate':>10} {'measured':>10} {'err':>7} "
            f"{'extrap.':>10} {'err':>7}" + ("  reserved" if args.device != "cpu" else "")
        )
    for label, name, flags, batches in CASES:
        script = TRAINERS / name
        fixed0, per0, _ = fit(script, flags, batches[0])  # what "largest batch that fits" extrapolates with
        for batch in batches:
            fixed, per_sample, method = fit(script, flags, batch)
            est, extrap = round(fixed + per_sample * batch), round(fixed0 + per0 * batch)
            got = measure(script, flags, batch, args.device)
            err, err_x = est / got["allocated"] - 1, extrap / got["allocated"] - 1
            rows.append(
                {
                    "case": label,
                    "batch": batch,
                    "method": method,
                    "estimate_bytes": est,
                    "extrapolated_from": batches[0],
                    "extrapolated_bytes": extrap,
                    "measured_bytes": got["allocated"],
                    "reserved_bytes": got["reserved"],
                    "error": err,
                    "extrapolated_error": err_x,
                }
            )
            if not args.json:
                reserved = f"  {got['reserved'] / 2**20:8.1f}M" if got["reserved"] is not None else ""
                print(
                    f"{label:<32} {batch:>6} {method:>8} {est / 2**20:>9.1f}M {got['allocated'] / 2**20:>9.1f}M "
                    f"{err:>+7.1%} {extrap / 2**20:>9.1f}M {err_x:>+7.1%}{reserved}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for key, what in (("error", "estimate at its own batch"), ("extrapolated_error", "extrapolated")):
        worst = max(rows, key=lambda r: abs(r[key]))
        print(
            f"{what}: worst |err| {abs(worst[key]):.1%} ({worst['case']}, batch {worst['batch']}); "
            f"{sum(abs(r[key]) <= 0.15 for r in rows)}/{len(rows)} within the 15% target"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
