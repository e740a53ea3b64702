"""`list_runs` on a big runs folder: is it flat in the number of runs, and does it re-read nothing?

Usage:
    python bench/bench_list_runs.py                    # 1,000 runs, 20 with 1M-record streams (~2 min)
    python bench/bench_list_runs.py --runs 200 --records 100000

Builds a runs folder of `--runs` finished runs (manifest.json and state.json as the launcher and
supervisor write them); the 20 newest have a `--records`-record metrics stream (hard links of one
file, so the disk holds it once). Prints, best of `--repeat`, the time of `runs.list_runs(limit=20)`:

1. cold: a fresh process's first call, every listed stream summarised from its bytes;
2. warm, nothing changed: the summaries kept while the streams' stat signatures hold;
3. recorded: the states carry the final headline, as the supervisor writes it: no log is read;
4. the same with a tenth of the runs, to show the time does not grow with the folder.

Target (issue 15): (2) and (3) at most 50 ms with 1,000 runs, flat in the number of runs.
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
sys.path.insert(0, str(ROOT / "bench"))
from bench_curves import write_jsonl  # noqa: E402

from mcp_server import runs  # noqa: E402
from mcp_server.curves import load, summary  # noqa: E402

LISTED = 20


def make_runs(root: Path, count: int, stream: Path) -> list[Path]:
    folders = []
    for i in range(count):
        run_id = f"001-bench-{i:05d}"
        folder = root / run_id
        folder.mkdir(parents=True)
        manifest = {
            "run_id": run_id,
            "created_at": f"2026-12-01T00:00:{i % 60:02d}",
            "experiment": "001-bench",
            "experiment_dir": str(root),
            "source": "project",
            "title": "bench",
            "trainer": "trm_nav",
            "primary_metric": "val/loss",
            "argv": ["python", "train.py"],
            "env": {},
            "cwd": str(root),
            "project_dir": str(root),
            "agent": "bench",
        }
        state = {
            "status": "succeeded",
            "updated_at": 1.79e9 + i,
            "started_at": 1.79e9 + i,
            "finished_at": 1.79e9 + i + 60,
            "exit_code": 0,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "state.json").write_text(json.dumps(state))
        os.utime(folder / "manifest.json", (1.79e9 + i, 1.79e9 + i))
        if i >= count - LISTED:
            os.link(stream, folder / "metrics.jsonl")
        folders.append(folder)
    return folders


def timed(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        stream = tmp_path / "metrics.jsonl"
        write_jsonl(stream, args.records)
        figures = {}
        for count in (args.runs // 10, args.runs):
            root = tmp_path / f"runs-{count}"
            folders = make_runs(root, count, stream)
            os.environ["TRAINGUARD_RUNS_DIR"] = str(root)
            summary._summaries.clear()
            for folder in folders[-LISTED:]:
                load.forget(folder)
            t0 = time.perf_counter()
            page = runs.list_runs(limit=LISTED)
            cold = time.perf_counter() - t0
            assert page.runs and all(r.headline.startswith("best val/loss") for r in page.runs)  # a page: in budget
            warm = timed(args.repeat, lambda: runs.list_runs(limit=LISTED))
            for folder in folders[-LISTED:]:
                state = json.loads((folder / "state.json").read_text())
                state["headline"] = runs.status(folder.name).headline
                (folder / "state.json").write_text(json.dumps(state))
            summary._summaries.clear()
            recorded = timed(args.repeat, lambda: runs.list_runs(limit=LISTED))
            figures[count] = (cold, warm, recorded)
    print(f"\nlist_runs(limit={LISTED}), {LISTED} runs with {args.records:,}-record streams, best of {args.repeat}")
    print(f"{'runs in folder':>15} {'cold':>9} {'warm, unchanged':>16} {'headline in state':>18}")
    for count, (cold, warm, recorded) in figures.items():
        print(f"{count:>15,} {cold * 1000:>7.0f}ms {warm * 1000:>14.1f}ms {recorded * 1000:>16.1f}ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
