"""The experiment ledger (results.md) on real runs, and compare_runs by experiment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, error, ok, wait_until, write_experiment
from mcp_server import ledger, paths, runs
from mcp_server.errors import InvalidInput
from mcp_server.rundir import TERMINAL, open_run

# A cell ends at a `|` that no backslash escapes.
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def wait_done(run_id: str, timeout: float = 60.0):
    return wait_until(lambda: (st := runs.status(run_id)).status in TERMINAL and st, timeout, f"{run_id} to end")


def rows(path: Path) -> list[dict[str, str]]:
    """The table rows of a results.md, by column; asserts the header came once and each row is whole."""
    text = path.read_text()
    assert text.startswith(ledger.HEADER) and text.count("| run |") == 1
    found = []
    for line in text[len(ledger.HEADER) :].splitlines():
        assert line.startswith("| ") and line.endswith(" |"), line
        cells = [c.strip() for c in CELL_SPLIT.split(line)[1:-1]]
        assert len(cells) == len(ledger.COLUMNS), line
        found.append(dict(zip(ledger.COLUMNS, cells, strict=True)))
    return found


def test_a_finished_project_run_appends_one_row_with_its_best_metric_and_epoch(scripted):
    run_id = runs.launch("901", {"steps": 6, "interval": 0.0}, note="baseline").run_id
    assert wait_done(run_id).status == "succeeded"
    (row,) = rows(scripted / "experiments" / "901-quick" / "results.md")
    _, summary = runs.summary(run_id)
    best = summary.primary.best
    assert row["run"] == run_id and row["experiment"] == "901-quick" and row["status"] == "succeeded"
    assert row["metric"] == "val/acc" and float(row["best"]) == pytest.approx(best.value, rel=1e-3)
    assert row["at"] == f"epoch {best.epoch:g}" and row["note"] == "baseline"
    # steps=6 differs from the experiment's 5; interval=0.0 is the trainer's default: not a difference
    assert row["overrides"] == "steps=6"
    assert not (paths.runs_root() / "results.md").exists()


def test_a_failed_run_records_its_failure_and_findings(scripted):
    run_id = runs.launch("903").run_id
    assert wait_done(run_id).status == "failed"
    (row,) = rows(scripted / "experiments" / "903-crash" / "results.md")
    assert row["run"] == run_id and row["status"] == "failed (exited with code 1)"


def test_a_bundled_experiment_s_row_goes_to_the_runs_folder_never_the_plugin_s(scripted, tmp_path, monkeypatch):
    bundled = tmp_path / "plugin" / "experiments"
    folder = write_experiment(bundled.parent, "951-bundled-quick", "scripted", {"steps": 3})
    monkeypatch.setattr(paths, "BUNDLED_EXPERIMENTS", bundled)
    result = runs.launch("951")
    assert open_run(paths.runs_root(), result.run_id).read_manifest().source == "bundled"
    assert wait_done(result.run_id).status == "succeeded"
    (row,) = rows(paths.runs_root() / "results.md")
    assert row["run"] == result.run_id and row["experiment"] == "951-bundled-quick" and row["best"]
    assert not (folder / "results.md").exists() and not (scripted / "experiments" / "951-bundled-quick").exists()


def test_two_runs_that_finish_at_the_same_moment_give_two_whole_rows(scripted):
    ids = [runs.launch("902", note=f"run {i} " + "x" * 200).run_id for i in range(2)]
    for run_id in ids:
        run = open_run(paths.runs_root(), run_id)
        wait_until(lambda run=run: run.metrics.exists() and run.metrics.stat().st_size > 0, what="first metrics")
    go = threading.Barrier(2)

    def stop(run_id: str) -> None:
        go.wait()
        runs.stop(run_id, grace_s=10)

    threads = [threading.Thread(target=stop, args=(run_id,)) for run_id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {wait_done(r).status for r in ids} == {"stopped"}
    found = rows(scripted / "experiments" / "902-hang" / "results.md")
    assert sorted(r["run"] for r in found) == sorted(ids) and {r["status"] for r in found} == {"stopped"}


APPENDER = """
import sys
from pathlib import Path
from mcp_server import ledger
path, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    ledger.append_row(path, f"| {tag}-{i} |" + " z |" * 9 + " " + tag * 3000 + "\\n")
"""


def test_rows_appended_from_several_processes_at_once_never_interleave(tmp_path):
    path = tmp_path / "results.md"
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag], cwd=REPO, stdin=subprocess.DEVNULL)
        for tag in "ab"
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    text = path.read_text()
    assert text.count(ledger.HEADER) == 1
    lines = text[len(ledger.HEADER) :].splitlines()
    assert len(lines) == 80
    for line in lines:
        tag = line[2]
        assert line.endswith(" " + tag * 3000) and tag * 3000 in line and ("b" if tag == "a" else "a") * 3 not in line


def test_a_hostile_note_stays_one_row(scripted):
    note = "ok | status | forged\n| run | fake |\r\nlast\u2028line \\| end"
    run_id = runs.launch("901", note=note).run_id
    assert wait_done(run_id).status == "succeeded"
    (row,) = rows(scripted / "experiments" / "901-quick" / "results.md")
    assert row["run"] == run_id and row["status"] == "succeeded"
    assert row["note"].replace("\\|", "|") == "ok | status | forged | run | fake | last line \\| end"


def test_cells_are_one_line_escaped_and_clipped():
    assert ledger.cell("a|b\nc\td\x1b[31m") == "a\\|b c d"  # the terminal escape goes whole
    assert ledger.cell("") == "-"
    assert len(ledger.cell("y" * 10_000, 80)) <= 80 and "\n" not in ledger.cell("y\n" * 5000, 240)


def test_a_symlinked_results_md_is_refused_and_the_outcome_still_recorded(scripted):
    elsewhere = scripted / "elsewhere.md"
    elsewhere.write_text("someone's file\n")
    (scripted / "experiments" / "901-quick" / "results.md").symlink_to(elsewhere)
    run_id = runs.launch("901").run_id
    st = wait_done(run_id)
    assert st.status == "succeeded" and st.exit_code == 0
    assert "results.md row not written" in st.failure and "symbolic link" in st.failure
    assert elsewhere.read_text() == "someone's file\n"
    with pytest.raises(InvalidInput, match="symbolic link"):
        ledger.append_row(scripted / "experiments" / "901-quick" / "results.md", "| x |\n")


def test_compare_runs_takes_an_experiment_and_compares_its_finished_runs(scripted):
    quick = [runs.launch("901", {"steps": s}).run_id for s in (3, 6)]
    crash = runs.launch("903").run_id
    for run_id in [*quick, crash]:
        wait_done(run_id)
    table = ok("compare_runs", {"experiment": "901"})
    assert {r["run_id"] for r in table["rows"]} == set(quick) and table["metric"] == "val/acc"
    assert table["rows"][0]["run_id"] == quick[1] and table["rows"][0]["differs"] == {"steps": 6}
    assert [r["run_id"] for r in ok("compare_runs", {"experiment": 903})["rows"]] == [crash]
    assert "not both" in error("compare_runs", {"experiment": "901", "run_ids": quick})
    assert "either run_ids" in error("compare_runs", {})
    assert "no finished run" in error("compare_runs", {"experiment": "902"})
    assert "no finished run" in error("compare_runs", {"experiment": "977"})  # no such folder: matched by number


def test_runs_of_lists_newest_first_and_matches_a_removed_experiment_by_number(scripted):
    first = runs.launch("901", {"steps": 2}).run_id
    wait_done(first)
    second = runs.launch("901", {"steps": 3}).run_id
    wait_done(second)
    assert [r.run_id for r in ledger.runs_of("901", scripted)] == [second, first]
    (scripted / "experiments" / "901-quick" / "experiment.toml").unlink()
    (scripted / "experiments" / "901-quick" / "hypothesis.md").unlink()
    (scripted / "experiments" / "901-quick" / "results.md").unlink()
    (scripted / "experiments" / "901-quick").rmdir()
    assert [r.run_id for r in ledger.runs_of("901-quick", scripted)] == [second, first]
    assert list(ledger.runs_of("901-other", scripted)) == []
    with pytest.raises(InvalidInput, match="not a number"):
        list(ledger.runs_of("../901", scripted))


def test_a_run_found_lost_gets_its_row_once(scripted):
    run_id = runs.launch("902").run_id
    run = open_run(paths.runs_root(), run_id)
    wait_until(lambda: run.metrics.exists() and run.metrics.stat().st_size > 0, what="first metrics")
    os.kill(run.read_state().supervisor_pid, signal.SIGKILL)
    wait_until(lambda: runs.status(run_id).status == "lost", what="lost status")
    runs.status(run_id)  # a later check records nothing more
    (row,) = rows(scripted / "experiments" / "902-hang" / "results.md")
    assert row["run"] == run_id and row["status"].startswith("lost (the supervisor ended") and row["best"]
