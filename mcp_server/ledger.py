"""The experiment ledger: one table row per finished run in a `results.md` (DESIGN's contract:
"results of its runs are appended to `results.md`" in the experiment folder).

The scratchpad is a diary; this is the experiment's memory: which settings were tried, how far
each got on the primary metric, how it ended and what the agent meant by it, so the next
session does not run the same thing again. A project experiment's rows go to
`experiments/NNN-slug/results.md`; a bundled experiment's to the runs folder's `results.md`
(`runs/results.md`), never into the plugin's own folder, which may be read-only, shared by
projects, or replaced by an update.

The supervisor writes the row when it records the outcome; a status check that finds a run
`lost` writes it too (the supervisor died, so nobody else will; a lost run is a run the user
paid for, and a ledger without it would invite running it again). Each row is one `os.write`
on an `O_APPEND` descriptor, so two runs that finish at once give two whole rows; the header
is written under a lock by whoever finds the file empty.

It imports no numpy: the supervisor imports this module while its trainer runs (see
`supervisor._final_summary`); the summary is passed in, or made lazily for a lost run.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_server import budget, paths, registry, safefiles, textlog
from mcp_server.errors import InvalidInput, NotFound, TrainguardError
from mcp_server.rundir import RunDir, RunState, newest_runs
from mcp_server.specs import resolve_config

if TYPE_CHECKING:
    from mcp_server.curves.summary import CurveSummary
    from mcp_server.rundir import Manifest

log = logging.getLogger("trainguard.ledger")

RESULTS_FILE = "results.md"
COLUMNS = ("run", "finished", "experiment", "status", "metric", "best", "at", "overrides", "findings", "note")
HEADER = (
    "# Results\n\n"
    "One row per finished run, written by trainguard when the run ends (best = the primary "
    "metric's best value, at = where it was reached).\n\n"
    + "| "
    + " | ".join(COLUMNS)
    + " |\n|"
    + "---|" * len(COLUMNS)
    + "\n"
)
CELL_CHARS = {"status": 120, "overrides": 240, "findings": 120, "note": 240}  # others are short by nature
DEFAULT_CELL_CHARS = 80
MAX_FINDINGS = 4


def destination(run: RunDir, manifest: Manifest) -> Path:
    """Where the run's row goes: its experiment folder for a project experiment that lies in the
    project's `experiments/`, else (bundled, or a manifest naming a folder elsewhere) the
    `results.md` beside the run folders."""
    if manifest.source == "project":
        folder = Path(manifest.experiment_dir)
        experiments = Path(manifest.project_dir) / "experiments"
        inside = folder.resolve().parent == experiments.resolve()
        if inside and registry.EXPERIMENT_DIR_RE.fullmatch(folder.name) and not folder.is_symlink():
            return folder / RESULTS_FILE
    return run.path.parent / RESULTS_FILE


def cell(value: Any, limit: int = DEFAULT_CELL_CHARS) -> str:
    """`value` as one table cell: one line (every line break and tab a space, control characters
    gone), `|` escaped so it cannot end the cell, at most `limit` characters."""
    text = " ".join(textlog.sanitize(str(value)).split())
    text = budget.clip(text, limit) or ""
    return text.replace("|", "\\|") or "-"


def differing_overrides(manifest: Manifest) -> dict[str, Any]:
    """The overrides whose value differs from the experiment's own config (its arguments over the
    trainer's defaults), as the experiment is now; all of them if it can no longer be read."""
    if not manifest.overrides:
        return {}
    project = Path(manifest.project_dir)
    try:
        exp = registry.load_experiment(manifest.experiment, project)
        if exp.dir.resolve() != Path(manifest.experiment_dir).resolve():
            return dict(manifest.overrides)  # another experiment of that number shadows it now
        spec = registry.load_trainer(exp.trainer, project)
        base = resolve_config(spec, [(f"experiment {exp.id}", exp.args)], project)
    except (OSError, TrainguardError) as exc:
        log.info("overrides of %s kept whole: %s", manifest.run_id, exc)
        return dict(manifest.overrides)
    return {k: v for k, v in manifest.overrides.items() if k not in base or base[k] != v}


def row(run: RunDir, manifest: Manifest, state: RunState, summary: CurveSummary | None) -> str:
    """The run's row, one line ending in a newline."""
    finished = dt.datetime.fromtimestamp(state.finished_at or state.updated_at)
    status = state.status + (f" ({state.failure})" if state.failure else "")
    best = summary.primary.best if summary and summary.primary else None
    if best is not None and best.value is not None:
        value = f"{best.value:.4g}"
        at = (
            f"epoch {best.epoch:g}"
            if best.epoch is not None
            else f"step {best.step:g}"
            if best.step is not None
            else ""
        )
    else:
        value, at = "", ""
    serious = [f.rule for f in (summary.findings if summary else []) if f.severity in ("fail", "warn")]
    findings = list(dict.fromkeys(serious))
    overrides = differing_overrides(manifest)
    values = {
        "run": run.run_id,
        "finished": f"{finished:%Y-%m-%d %H:%M}",
        "experiment": manifest.experiment,
        "status": status,
        "metric": summary.primary_metric if summary else manifest.primary_metric,
        "best": value,
        "at": at,
        "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()),
        "findings": ", ".join(findings[:MAX_FINDINGS])
        + (f" +{len(findings) - MAX_FINDINGS}" if len(findings) > MAX_FINDINGS else ""),
        "note": manifest.note,
    }
    return "| " + " | ".join(cell(values[c], CELL_CHARS.get(c, DEFAULT_CELL_CHARS)) for c in COLUMNS) + " |\n"


def append_row(path: Path, line: str) -> None:
    """Append `line` to the ledger at `path`, with the header first if the file is new.

    One `os.write` per row on an `O_APPEND` descriptor: the kernel puts each whole row at the
    end, so rows of runs finishing together never interleave. The lock only decides who writes
    the header of a new file.

    Raises:
        NotRegular: if `path` is a link, a FIFO or anything but a regular file (never written through).
        OSError: if the folder is missing or the disk is full.
    """
    data = line.encode()
    with safefiles.open_append(path) as fh:
        fd = fh.fileno()
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size == 0:
            _write_all(fd, HEADER.encode())
        _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written != len(data):  # a regular file writes short only when the disk is full
        raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")


def record(run: RunDir, manifest: Manifest, state: RunState, summary: CurveSummary | None) -> Path:
    """Write the finished run's row to its ledger; returns the ledger's path."""
    path = destination(run, manifest)
    append_row(path, row(run, manifest, state, summary))
    return path


def record_lost(run: RunDir, state: RunState) -> None:
    """The row of a run a status check found `lost`, with its curves summarised here (in the
    server: its supervisor, which would have done it, is gone). A failure is logged, never raised:
    the outcome is recorded already."""
    from mcp_server.curves.summary import summarize_run_dir  # numpy: never in a supervisor's import

    try:
        manifest = run.read_manifest()
        try:
            summary = summarize_run_dir(run.path, manifest)
        except (OSError, ValueError, TrainguardError) as exc:
            log.warning("no summary for %s's results row: %s", run.run_id, exc)
            summary = None
        record(run, manifest, state, summary)
    except (OSError, TrainguardError) as exc:
        log.warning("results.md row of %s not written: %s", run.run_id, exc)


def runs_of(experiment: str, project: Path) -> Iterator[RunDir]:
    """The runs of `experiment` (`1`, `001` or `001-slug`), newest first, whatever their status.

    The experiment is resolved as a launch would resolve it (a project's 001 shadows the bundled
    one); one that no longer exists is matched by its number (and slug) in the runs' manifests.
    A damaged run folder is skipped: it is list_runs' to report.

    Raises:
        InvalidInput: if `experiment` is not of that shape.
    """
    try:
        _, folder = registry.find_experiment_dir(experiment, project)
        names, number, slug = {folder.name}, int(folder.name[:3]), None
    except NotFound:
        m = registry.REF_RE.fullmatch(str(experiment).strip())
        if m is None:
            raise
        names, number, slug = set(), int(m.group(1)), m.group(2)
    for path in newest_runs(paths.runs_root(project)):
        run = RunDir(Path(path))
        try:
            name = run.read_manifest().experiment
        except (OSError, InvalidInput):
            continue
        if name in names or (not names and name[:3] == f"{number:03d}" and slug in (None, name[4:])):
            yield run
