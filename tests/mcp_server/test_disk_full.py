"""A full disk, for real: the runs folder on a small tmpfs with few inodes (issue 12, failure 8).

A launch that meets a full disk at any point leaves nothing behind and says so; a disk that
fills while a run trains ends the run as failed with `disk full on ...` and a disk_full
diagnosis, not as lost with empty logs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from conftest import wait_until, write_experiment
from mcp_server import preflight, runs
from mcp_server.errors import Conflict
from mcp_server.rundir import TERMINAL, all_runs


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs mounted for the test (CI and this machine run as root), unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=230m,nr_inodes=400", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full tests ({done.stderr.strip()}); run them as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_inodes(folder: Path, made: list[Path]) -> list[Path]:
    """Empty files until the filesystem has no inode left; returns all of them (delete some to free
    inodes)."""
    while True:
        path = folder / f"filler-{len(made)}"
        try:
            path.touch(exist_ok=False)
        except FileExistsError:
            made.append(path)
            continue
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)


def test_a_launch_that_runs_out_of_inodes_at_any_point_leaves_nothing_behind(scripted, small_disk, monkeypatch):
    root = small_disk / "runs"
    root.mkdir()
    monkeypatch.setenv("TRAINGUARD_RUNS_DIR", str(root))
    # The disk fills between pre-flight and the launch (another job writing): pre-flight's own
    # guard must not hide what the launch does then.
    monkeypatch.setattr(preflight, "INODES_FAIL", 0)
    write_experiment(scripted, "921-inodes", "scripted", {"steps": 2})
    (root / ".slots").mkdir()  # made once, as a first launch would
    fillers: list[Path] = []
    outcomes = {}
    for free in range(0, 16):
        fillers = [p for p in fill_inodes(small_disk, fillers) if p.exists()]
        for path in fillers[:free]:
            path.unlink()
        try:
            result = runs.launch("921")
        except Conflict as exc:
            assert "disk full on" in str(exc) and "TRAINGUARD_RUNS_DIR" in str(exc), exc
            assert all_runs(root) == [] and [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
            outcomes[free] = "refused"
        else:
            run_id = result.run_id
            state = wait_until(lambda: (s := runs.status(run_id)).status in TERMINAL and s, 60, "the run")  # noqa: B023
            assert state.status in ("succeeded", "failed"), state
            if state.status == "failed":
                assert "disk full" in state.failure, state.failure
            outcomes[free] = state.status
            for run in all_runs(root):
                subprocess.run(["rm", "-rf", str(run.path)], check=True)
    print("\nfree inodes -> launch:", outcomes)
    assert "refused" in outcomes.values() and "succeeded" in outcomes.values(), outcomes


def test_a_disk_that_fills_mid_run_is_recorded_as_disk_full(scripted, small_disk, monkeypatch):
    root = small_disk / "runs"
    monkeypatch.setenv("TRAINGUARD_RUNS_DIR", str(root))
    write_experiment(scripted, "922-fill", "scripted", {"steps": 10, "interval": 0.2, "write_at": 3, "write_mb": 400})
    result = runs.launch("922")
    st = wait_until(lambda: (s := runs.status(result.run_id)).status in TERMINAL and s, 90, "the run to end")
    assert st.status == "failed" and st.failure.startswith("disk full on"), st
    d = runs.diagnose_run(result.run_id)
    assert d.failure_class == "disk_full" and "TRAINGUARD_RUNS_DIR" in " ".join(d.remedies)
    assert not (Path(st.run_dir) / ".reserve").exists()
    os.statvfs(root)  # the filesystem is still there for the fixture to unmount
