"""Summarising long runs: our readers and summary against polars, pandas and TensorBoard's loader.

Usage:
    pip install -e ".[bench]"            # pandas; polars is a dependency, tensorboard comes with the train extra
    python bench/bench_curves.py         # about 3 minutes, most of it TensorBoard's loader
    python bench/bench_curves.py --records 200000 --scalars 200000 --no-tensorboard

Prints one table. Each row reads the same file from disk, cold (a fresh reader each time), and
gives our time against the parse alone of the libraries a user would reach for:

1. JSONL, `--records` records of our metrics stream (a train record per step with loss and lr,
   a val record every 1,000 steps, one spike): `summarize_run`'s path (read every value,
   statistics, diagnoses) against `polars.read_ndjson` and `pandas.read_json(lines=True)`.
   Target (issue 15): at most 0.35 s for 1M records where polars takes 0.19 s (1.84x polars).
2. CSV, the same records: our CSV reader plus summary against `polars.read_csv` and
   `pandas.read_csv`. Target: at most the pandas parse.
3. TensorBoard, `--scalars` scalars written by torch's SummaryWriter: our raw reader plus summary
   against tensorboard's `EventFileLoader` iterating every event (no sampling, no reservoir).
4. Summary size in characters for 1,000 records and for `--records` (it must not grow).
5. An incremental re-summary after 1,000 new lines appended to the 1M-record file (target 20 ms
   where polars parses the file in 0.19 s), and whether the spike is still reported.

Best of `--repeat` runs for each timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mcp_server.curves import load  # noqa: E402
from mcp_server.curves.summary import summarize  # noqa: E402


def write_jsonl(path: Path, records: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    loss = 2.0 * np.exp(-np.arange(start, start + records) / (records / 5)) + 0.05 * rng.random(records)
    if start == 0:
        loss[int(records * 0.61)] *= 30
    t0 = 1.79e9
    with path.open("a") as fh:
        for i, step in enumerate(range(start, start + records)):
            fh.write(
                f'{{"t": {t0 + step * 0.01:.3f}, "step": {step}, "epoch": {step // 10_000}, '
                f'"split": "train", "loss": {loss[i]:.6f}, "lr": 0.0003}}\n'
            )
            if step % 1000 == 999:
                fh.write(
                    f'{{"t": {t0 + step * 0.01:.3f}, "step": {step}, "split": "val", '
                    f'"loss": {loss[i] * 1.1:.6f}, "acc": {0.5 + 0.4 * step / records:.4f}}}\n'
                )


def write_csv(path: Path, records: int) -> None:
    rng = np.random.default_rng(0)
    loss = 2.0 * np.exp(-np.arange(records) / (records / 5)) + 0.05 * rng.random(records)
    with path.open("w") as fh:
        fh.write("step,epoch,time,loss,lr\n")
        fh.writelines(f"{s},{s // 10_000},{1.79e9 + s * 0.01:.3f},{loss[s]:.6f},0.0003\n" for s in range(records))


def write_tfevents(folder: Path, scalars: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder), flush_secs=10**6, max_queue=10**6)
    rng = np.random.default_rng(0)
    values = (2.0 * np.exp(-np.arange(scalars) / (scalars / 5)) + 0.05 * rng.random(scalars)).tolist()
    tags = ("train/loss", "train/lr", "val/loss", "val/acc")
    for i, v in enumerate(values):
        writer.add_scalar(tags[i % 4], v, i // 4)
    writer.close()
    return next(folder.glob("events.out.tfevents.*"))


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def ours(target: Path, primary: str):
    def run():
        load.forget(target)
        with load.loaded(target) as found:
            return summarize(found, primary)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--scalars", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-tensorboard", action="store_true", help="skip the TensorBoard row (writing it is slow)")
    args = parser.parse_args()
    import pandas as pd
    import polars as pl

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jsonl, small = tmp / "long" / "metrics.jsonl", tmp / "short" / "metrics.jsonl"
        csv, tb = tmp / "m.csv", tmp / "tb"
        for p in (jsonl.parent, small.parent, tb):
            p.mkdir()
        write_jsonl(jsonl, args.records)
        write_jsonl(small, 1_000)
        write_csv(csv, args.records)
        mb = jsonl.stat().st_size / 2**20

        ours(jsonl.parent, "val/loss")()  # imports polars and warms the page cache, as a running server has
        t_ours, summary = best_of(args.repeat, ours(jsonl.parent, "val/loss"))
        t_pl, _ = best_of(args.repeat, lambda: pl.read_ndjson(jsonl))
        t_pd, _ = best_of(args.repeat, lambda: pd.read_json(jsonl, lines=True))
        rows.append((f"JSONL {args.records:,} records ({mb:.0f} MB)", t_ours, "polars.read_ndjson", t_pl))
        rows.append(("", t_ours, "pandas.read_json(lines=True)", t_pd))
        spikes = [f.evidence for f in summary.findings if f.rule == "spike"]

        c_ours, _ = best_of(args.repeat, ours(csv, "loss"))
        c_pl, _ = best_of(args.repeat, lambda: pl.read_csv(csv))
        c_pd, _ = best_of(args.repeat, lambda: pd.read_csv(csv))
        rows.append((f"CSV {args.records:,} rows", c_ours, "polars.read_csv", c_pl))
        rows.append(("", c_ours, "pandas.read_csv", c_pd))

        if not args.no_tensorboard:
            print(f"writing {args.scalars:,} scalars with SummaryWriter ...", file=sys.stderr)
            events = write_tfevents(tb, args.scalars)
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

            t_tb_ours, _ = best_of(args.repeat, ours(tb, "val/loss"))
            t_tb, _ = best_of(1, lambda: sum(1 for _ in EventFileLoader(str(events)).Load()))
            rows.append((f"TensorBoard {args.scalars:,} scalars", t_tb_ours, "EventFileLoader, every event", t_tb))

        with load.loaded(small.parent) as found:
            small_size = len(summarize(found, "val/loss").model_dump_json())
        big_size = len(summary.model_dump_json())

        load.forget(jsonl.parent)
        with load.loaded(jsonl.parent) as found:
            summarize(found, "val/loss")

        def again():
            with load.loaded(jsonl.parent) as found:
                return found.bytes_read, summarize(found, "val/loss")

        incs = []
        for k in range(args.repeat):
            write_jsonl(jsonl, 1_000, start=args.records + k * 1_000)
            t_inc, (new_bytes, inc_summary) = best_of(1, again)
            incs.append(t_inc)
        t_inc = min(incs)
        spikes_after = [f.evidence for f in inc_summary.findings if f.rule == "spike"]

    print(f"\n{'file':<40} {'ours':>9} {'reference (parse only)':<30} {'ref':>9} {'ours/ref':>9}")
    for name, a, ref, b in rows:
        print(f"{name:<40} {a:>8.2f}s {ref:<30} {b:>8.2f}s {a / b:>8.2f}x")
    print(f"\nsummary size: {small_size:,} chars for 1,000 records, {big_size:,} for {args.records:,}")
    print(f"incremental re-summary after 1,000 new lines: {t_inc * 1000:.0f} ms, {new_bytes:,} bytes read")
    print(
        f"incremental re-summary against the polars parse of the whole file: {t_inc / t_pl:.3f}x "
        f"(target 20 ms / 0.19 s = 0.105x)"
    )
    print(
        f"spike kept: {spikes[0] if spikes else 'NOT FOUND'}; after the appends: "
        f"{'kept' if spikes_after else 'NOT FOUND'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
