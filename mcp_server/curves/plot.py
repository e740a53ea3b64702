"""A PNG of a run's curves, for `plot_run` and `trainguard plot`.

matplotlib is imported on the first plot only (it takes about half a second), with the
non-interactive Agg backend: the server has no display and must never open a window.
Long series are reduced to the min and max of each of `POINTS` buckets, so a single spike
in a million points is still drawn; non-finite values are marked where they start.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mcp_server.curves import names
from mcp_server.curves.store import Curves, Series

POINTS = 2000  # buckets per series; each keeps its min and max
MAX_PANELS = 4


def panel_key(name: str) -> str:
    """The axes a metric is drawn on: train/loss and val/loss (or train_loss, eval_loss) share one."""
    return names.base(name) or names.key(name)


def envelope(series: Series, points: int = POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) with at most 2 * `points` points: each bucket's min and max, in step order."""
    steps, values = series.steps(), series.values()
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    if values.size <= 2 * points:
        return steps, values
    edges = np.linspace(0, values.size, points + 1).astype(np.int64)
    lo = np.minimum.reduceat(values, edges[:-1])
    hi = np.maximum.reduceat(values, edges[:-1])
    mid = steps[(edges[:-1] + edges[1:]) // 2]
    return np.repeat(mid, 2), np.column_stack([lo, hi]).ravel()


def plot_curves(curves: Curves, metrics: list[str], title: str, out: Path) -> list[str]:
    """Draw `metrics` (grouped into at most MAX_PANELS panels) to the PNG `out`, written atomically.

    Returns the metrics drawn, in panel order.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels: dict[str, list[Series]] = {}
    for name in metrics:
        key = panel_key(name)
        if key in panels or len(panels) < MAX_PANELS:
            panels.setdefault(key, []).append(curves.series[name])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), squeeze=False, sharex=False)
    for ax, (key, group) in zip(axes[:, 0], panels.items(), strict=True):
        for s in group:
            x, y = envelope(s)
            ax.plot(x, y, linewidth=1.0, label=f"{s.name} ({len(s):,} points)")
            bad = ~np.isfinite(s.values())
            if bad.any():
                first = s.steps()[np.argmax(bad)]
                ax.axvline(first, color="red", linestyle="--", linewidth=1)
                ax.annotate(
                    f"{s.name} non-finite from step {first:g}",
                    (first, 0.95),
                    color="red",
                    fontsize=8,
                    xycoords=("data", "axes fraction"),
                    ha="left",
                    va="top",
                )
        values = np.concatenate([s.values() for s in group])
        values = values[np.isfinite(values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return [s.name for group in panels.values() for s in group]


def default_metrics(curves: Curves, primary: str | None, limit: int = MAX_PANELS) -> list[str]:
    """What to draw when nothing is asked: the primary metric's panel first, then losses, then the rest."""
    drawable = [n for n, s in curves.series.items() if len(s) > 1 and np.isfinite(s.values()).any()]
    keys: list[str] = []
    ordered = sorted(
        drawable, key=lambda n: (n != primary and panel_key(n) != panel_key(primary or ""), "loss" not in n.lower(), n)
    )
    for name in ordered:
        if panel_key(name) not in keys:
            keys.append(panel_key(name))
    keep = set(keys[:limit])
    return [n for n in ordered if panel_key(n) in keep]
