"""The adversarial review's reproductions (issue 12), run layer: one run one folder, a killed
supervisor, a forged state file, links in a run folder. Real processes throughout; each test
checks the property (each run's argv, env and files name its own folder; no second trainer on a
slot; a foreign process untouched), not a symptom."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import wait_until, write_experiment
from mcp_server import paths, procs, runs
from mcp_server.rundir import TERMINAL, open_run

LONG = {"steps": 100000, "interval": 0.05}


def finished(run_id, timeout=60.0):
    return wait_until(lambda: (s := runs.status(run_id)).status in TERMINAL and s, timeout, f"{run_id} to end")


def trainer_alive(run_id) -> bool:
    state = open_run(paths.runs_root(), run_id).read_state()
    return bool(procs.RunProcesses(run_id, state.pid, state.pid_started).members())


def test_launches_in_the_same_second_each_name_only_their_own_folder(scripted, monkeypatch):
    monkeypatch.setattr(runs, "_now", lambda: dt.datetime(2026, 12, 1, 12, 0, 0))  # one second for all three
    write_experiment(scripted, "905-burst", "scripted", {"steps": 20, "interval": 0.05})
    launched = [runs.launch("905") for _ in range(3)]
    ids = [r.run_id for r in launched]
    assert ids == ["905-burst-20261201-120000", "905-burst-20261201-120000-1", "905-burst-20261201-120000-2"]
    for result in launched:
        run = open_run(paths.runs_root(), result.run_id)
        manifest = run.read_manifest()
        assert result.run_dir == str(run.path)
        assert manifest.argv[manifest.argv.index("--out") + 1] == str(run.checkpoints)
        assert manifest.env["TRAINGUARD_RUN_ID"] == run.run_id
        assert manifest.env["TRAINGUARD_RUN_DIR"] == str(run.path)
        assert manifest.env["TRAINGUARD_METRICS"] == str(run.metrics)
    for result in launched:
        st = finished(result.run_id)
        assert st.status == "succeeded" and st.checkpoints == ["last.json"]
        # Each run's own stream holds exactly its own 20 steps: nobody else wrote into it.
        assert st.latest["train/loss"] == pytest.approx(1 / 20, rel=1e-3)
        start_events = [
            line
            for line in open_run(paths.runs_root(), result.run_id).metrics.read_text().splitlines()
            if '"event": "start"' in line or '"event":"start"' in line
        ]
        assert len(start_events) == 1


def test_a_killed_supervisor_never_lets_a_second_trainer_onto_its_slot(scripted, monkeypatch):
    monkeypatch.setenv("TRAINGUARD_CPU_SLOTS", "1")
    write_experiment(scripted, "906-long", "scripted", LONG)
    write_experiment(scripted, "907-next", "scripted", {"steps": 3})
    first = runs.launch("906")
    second = runs.launch("907")
    assert (first.status, second.status) == ("running", "queued")
    run = open_run(paths.runs_root(), first.run_id)
    wait_until(lambda: run.metrics.exists() and run.metrics.stat().st_size > 0, what="first metrics")
    state = run.read_state()
    # One thread: a second one would make the kernel send the trainer its death signal twice.
    assert psutil.Process(state.supervisor_pid).num_threads() == 1
    os.kill(state.supervisor_pid, signal.SIGKILL)
    # Until the first trainer is gone, the queued run must not start: sample both.
    deadline = time.monotonic() + 30
    while trainer_alive(first.run_id):
        assert open_run(paths.runs_root(), second.run_id).read_state().status == "queued", "slot double-booked"
        assert time.monotonic() < deadline, "the orphaned trainer was never stopped"
        time.sleep(0.02)
    lost = finished(first.run_id)
    assert lost.status == "lost" and "stopped with it" in lost.failure
    assert (run.checkpoints / "last.json").is_file()  # the leash's SIGTERM let it checkpoint
    pad = next((scripted / ".claude/scratchpad/training-runner").glob("*.md")).read_text()
    assert f"[finish] run {first.run_id} lost" in pad and "resume_run" in pad
    assert finished(second.run_id).status == "succeeded"  # and then the slot freed for the next one
    again = runs.stop(first.run_id)
    assert again.how == "none" and again.processes_left == 0


STUBBORN = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"
)


def test_a_trainer_that_survives_its_supervisor_keeps_its_slot_until_it_is_stopped(scripted, monkeypatch):
    """Where the leash's signal is ignored, the slot stays held (the trainer holds the lock) and the
    next status check stops the orphan: SIGTERM, then SIGKILL after the experiment's stop grace."""
    monkeypatch.setenv("TRAINGUARD_CPU_SLOTS", "1")
    (scripted / "scripts" / "stubborn.py").write_text(STUBBORN)
    spec = (scripted / "experiments/trainers/scripted.toml").read_text()
    (scripted / "experiments/trainers/stubborn.toml").write_text(
        spec.replace('name = "scripted"', 'name = "stubborn"').replace("scripted_trainer.py", "stubborn.py")
    )
    folder = write_experiment(scripted, "908-stubborn", "stubborn", {})
    (folder / "experiment.toml").write_text(
        (folder / "experiment.toml").read_text() + "\n[watchdog]\nstop_grace_s = 1\n"
    )
    write_experiment(scripted, "909-next", "scripted", {"steps": 2})
    first = runs.launch("908")
    second = runs.launch("909")
    run = open_run(paths.runs_root(), first.run_id)
    wait_until(lambda: b"up" in run.stdout.read_bytes(), what="the stubborn trainer")
    os.kill(run.read_state().supervisor_pid, signal.SIGKILL)
    time.sleep(1.0)  # the leash's SIGTERM has come and been ignored
    assert trainer_alive(first.run_id)
    assert open_run(paths.runs_root(), second.run_id).read_state().status == "queued"  # the slot is still held
    lost = wait_until(lambda: (s := runs.refresh(run)).status == "lost" and s, 20, "the orphan to be stopped")
    assert "stopped with it" in lost.failure and lost.orphaned_at is not None
    assert not trainer_alive(first.run_id)
    assert finished(second.run_id).status == "succeeded"


def test_stop_run_never_signals_a_process_a_forged_state_names(scripted):
    write_experiment(scripted, "910-long", "scripted", LONG)
    result = runs.launch("910")
    run = open_run(paths.runs_root(), result.run_id)
    wait_until(lambda: run.metrics.exists() and run.metrics.stat().st_size > 0, what="first metrics")
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        real = run.read_state()
        forged = real.model_copy(update={"pgid": foreign.pid})
        run.write_state(forged)
        stopped = runs.stop(result.run_id, grace_s=10)
        assert stopped.status == "stopped" and stopped.processes_left == 0  # the real run stopped
        assert foreign.poll() is None and psutil.Process(foreign.pid).status() != psutil.STATUS_ZOMBIE
        # A state naming the foreign process as the trainer, start time and all: still not signalled.
        forged = run.read_state().model_copy(
            update={
                "status": "running",
                "pid": foreign.pid,
                "pgid": foreign.pid,
                "pid_started": procs.start_time(foreign.pid),
                "supervisor_pid": None,
                "finished_at": None,
            }
        )
        run.write_state(forged)
        assert not procs.RunProcesses(run.run_id, foreign.pid, procs.start_time(foreign.pid)).members()
        assert runs.stop(result.run_id, grace_s=1).status == "lost"
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


def test_writes_into_a_run_folder_never_follow_a_link(scripted, tmp_path):
    write_experiment(scripted, "912-long", "scripted", LONG)
    result = runs.launch("912")
    run = open_run(paths.runs_root(), result.run_id)
    wait_until(lambda: (runs.status(result.run_id).epoch or 0) >= 3, what="three steps")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    run.stop_marker.symlink_to(precious)
    (run.path / "plot.png").symlink_to(precious)
    assert runs.stop(result.run_id, grace_s=10).status == "stopped"
    runs.plot(result.run_id)
    assert precious.read_text() == "keep me\n"
    assert not run.stop_marker.is_symlink() and not (run.path / "plot.png").is_symlink()


def test_a_runs_folder_that_links_out_of_the_project_is_a_preflight_warning(scripted, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (scripted / "runs").symlink_to(elsewhere, target_is_directory=True)
    from mcp_server.preflight import run_preflight

    check = next(c for c in run_preflight("901")[0].checks if c.name == "output")
    assert check.verdict == "warn" and "symbolic link" in check.detail and str(elsewhere) in check.detail


PLAIN = "import time\nprint('up', flush=True)\nwhile True:\n    time.sleep(0.05)\n"


def test_a_script_without_a_signal_handler_stops_on_sigterm_at_once(scripted):
    """The supervisor ignores SIGTERM; its trainer must not inherit that (it once did: a user's
    plain script then sat out the whole grace and was SIGKILLed)."""
    (scripted / "scripts" / "plain.py").write_text(PLAIN)
    spec = (scripted / "experiments/trainers/scripted.toml").read_text()
    (scripted / "experiments/trainers/plain.toml").write_text(
        spec.replace('name = "scripted"', 'name = "plain"').replace("scripted_trainer.py", "plain.py")
    )
    write_experiment(scripted, "923-plain", "plain", {})
    result = runs.launch("923")
    run = open_run(paths.runs_root(), result.run_id)
    wait_until(lambda: b"up" in run.stdout.read_bytes(), what="the plain script")
    t0 = time.monotonic()
    stopped = runs.stop(result.run_id, grace_s=30)
    assert stopped.how == "terminated" and stopped.status == "stopped" and time.monotonic() - t0 < 10
    assert runs.status(result.run_id).signal == signal.SIGTERM
