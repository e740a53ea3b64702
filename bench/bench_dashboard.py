"""The dashboard's cost: CPU at rest with 10 live runs watched, the time of each update, what a
curve of a million points costs the page, and the runs page of a project with hundreds of runs.

Usage:
    python bench/bench_dashboard.py               # 10 live runs, 30 s of watching (~2 min)
    python bench/bench_dashboard.py --runs 4 --seconds 10 --many 50

Makes a project with a user's own trainer (a script that logs a train loss and a val accuracy
through trainkit every 0.2 s: faster than a real trainer logs its epochs), launches `--runs` runs
of it, starts the dashboard, and plays what a person has open: the runs page (polled every 3 s)
and a page for each run (polled every 2 s), each passing back the version it has, as the page's
script does. Prints the dashboard process's CPU over the window (psutil: its own user+system
time) once the pages are open, and the median and worst latency of their updates (a page's first
answer computes everything it shows: its worst is given apart); then, for a finished run with 1,000,000 points, the
first answer's time, size and points, and a repeated one's; then, with `--many` finished runs in
the folder, the runs page's first answer and a repeated one.

Target (issue 17): at most 2% of one core at rest with 10 live runs, each update at most 50 ms,
a 1M-point curve as at most a few thousand points.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_server import runs  # noqa: E402
from mcp_server.dashboard import serve  # noqa: E402

TRAINER = """
import sys, time  # its arguments (--seed, --out) are not needed
from trainkit import MetricsStream, StopFlag
stop = StopFlag()
with MetricsStream() as stream:
    step = 0
    while not stop.requested:
        step += 1
        stream.log(step, "train", epoch=step, loss=1.0 / step)
        stream.log(step, "val", epoch=step, acc=1.0 - 0.5 / step)
        time.sleep(0.2)
    stream.event("done", reason="stopped")
sys.exit(stop.exit_code)
"""
SPEC = """
name = "ticker"
description = "Logs a loss and an accuracy every 0.2 s until stopped (bench)."
command = ["{python}", "{project_dir}/scripts/ticker.py"]
output_flag = "--out"
primary_metric = "val/acc"
primary_mode = "max"

[params.seed]
type = "int"
flag = "--seed"
default = 0
help = "unused: the ticker takes no arguments it needs"
"""


def get(port: int, path: str, token: str) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}", "X-Trainguard-Token": token})
    body = conn.getresponse().read()
    conn.close()
    return time.perf_counter() - t0, body


def poll(port: int, path: str, token: str, versions: dict[str, str | None], key: str) -> float:
    """One poll as the page makes it: with the version it has; keeps the one it gets."""
    since = f"?since={versions[key]}" if versions[key] else ""
    took, body = get(port, path + since, token)
    versions[key] = json.loads(body)["version"]
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--many", type=int, default=300, help="finished runs for the runs page's figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        project = Path(tmp)
        (project / "scripts").mkdir()
        (project / "scripts" / "ticker.py").write_text(TRAINER)
        shutil.copy(ROOT / "trainers" / "trainkit.py", project / "scripts")
        (project / "experiments" / "trainers").mkdir(parents=True)
        (project / "experiments" / "trainers" / "ticker.toml").write_text(SPEC)
        exp = project / "experiments" / "961-ticker"
        exp.mkdir()
        (exp / "experiment.toml").write_text('trainer = "ticker"\ntitle = "ticker"\n')
        (exp / "hypothesis.md").write_text("It ticks.\n")
        os.environ["CLAUDE_PROJECT_DIR"] = str(project)
        os.environ.setdefault("TRAINGUARD_PYTHON", sys.executable)
        os.environ["TRAINGUARD_CPU_SLOTS"] = str(args.runs)
        launched = [runs.launch("961", project=project).run_id for _ in range(args.runs)]
        info = serve.open_dashboard(project)
        token = json.loads((project / "runs" / ".dashboard.json").read_text())["token"]
        proc = psutil.Process(info.pid)
        try:
            time.sleep(3.0)  # the runs log; the dashboard warms up
            versions: dict[str, str | None] = dict.fromkeys([*launched, ""])
            opened = [  # the pages are opened: each first answer computes all it shows
                poll(info.port, path, token, versions, key)
                for key, path in [("", "/api/runs")] + [(i, f"/api/runs/{i}") for i in launched]
            ]
            time.sleep(2.0)
            latencies = []  # then, at rest, the pages' updates
            cpu0, t0 = proc.cpu_times(), time.monotonic()
            next_list = t0
            while time.monotonic() - t0 < args.seconds:
                tick = time.monotonic()
                if tick >= next_list:  # the runs page
                    latencies.append(poll(info.port, "/api/runs", token, versions, ""))
                    next_list = tick + 3.0
                for run_id in launched:  # the run pages
                    latencies.append(poll(info.port, f"/api/runs/{run_id}", token, versions, run_id))
                time.sleep(max(0.0, 2.0 - (time.monotonic() - tick)))
            cpu1, t1 = proc.cpu_times(), time.monotonic()
            used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            print(
                f"{args.runs} live runs logging every 0.2 s, the runs page and {args.runs} run pages open for "
                f"{t1 - t0:.0f} s: dashboard CPU {100 * used / (t1 - t0):.1f}% of one core; {len(latencies)} updates, "
                f"median {1000 * statistics.median(latencies):.1f} ms, worst {1000 * max(latencies):.1f} ms; "
                f"opening the {len(opened)} pages: worst first answer {1000 * max(opened):.0f} ms"
            )
        except BaseException:
            serve.close(project)
            raise
        finally:
            for run_id in launched:
                runs.stop(run_id, 5.0, project)
        big = project / "runs" / launched[0] / "metrics.jsonl"
        with big.open("a") as fh:
            for i in range(1_000_000):
                fh.write(f'{{"t": {i}, "step": {100000 + i}, "split": "train", "loss": {1.0 / (i + 1)}}}\n')
        took, body = get(info.port, f"/api/runs/{launched[0]}", token)
        points = sum(len(s["x"]) for p in json.loads(body)["curves"]["panels"] for s in p["series"])
        time.sleep(1.1)  # past the page's minimum refresh: the next answer is computed again, not kept
        again, _ = get(info.port, f"/api/runs/{launched[0]}", token)
        print(
            f"a run with 1,000,000 more points: first answer {1000 * took:.0f} ms, {len(body) / 1024:.0f} KiB, "
            f"{points} points in all its curves; again {1000 * again:.0f} ms"
        )
        for i in range(args.many):  # finished runs: copies of the stopped ones
            source = project / "runs" / launched[i % len(launched)]
            shutil.copytree(source, project / "runs" / f"{source.name}-copy{i}", symlinks=True)
        took, body = get(info.port, "/api/runs", token)
        version = json.loads(body)["version"]
        again, small = get(info.port, f"/api/runs?since={version}", token)
        print(
            f"the runs page with {args.many + len(launched)} runs: first answer {1000 * took:.0f} ms "
            f"({len(body) / 1024:.0f} KiB, {json.loads(body)['shown']} rows), then {1000 * again:.0f} ms "
            f"({len(small)} bytes: unchanged)"
        )
        serve.close(project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
