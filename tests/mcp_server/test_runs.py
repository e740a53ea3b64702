import os
import shutil
import signal

import pytest

from conftest import REPO, wait_until, write_experiment
from mcp_server import paths, procs, runs, textlog
from mcp_server.errors import Conflict, InvalidInput, NotFound
from mcp_server.rundir import TERMINAL, open_run


def wait_done(run_id, timeout=60.0):
    def done():
        st = runs.status(run_id)
        return st if st.status in TERMINAL else None

    return wait_until(done, timeout, f"run {run_id} to end")


def test_a_run_completes_with_state_manifest_metrics_and_scratchpad(scripted):
    result = runs.launch("901", note="smoke test")
    assert result.status in ("running", "succeeded") and result.pid
    st = wait_done(result.run_id)
    assert st.status == "succeeded" and st.exit_code == 0 and st.epoch == 5
    assert st.latest["val/acc"] == pytest.approx(0.9) and st.checkpoints == ["last.json"]
    run = open_run(paths.runs_root(), result.run_id)
    manifest = run.read_manifest()
    assert manifest.argv == result.argv and manifest.config["steps"] == 5
    assert manifest.env["TRAINGUARD_METRICS"] == str(run.metrics) and "note" in manifest.model_fields_set
    assert "step 5 loss 0.2" in run.stdout.read_text()
    pad = (scripted / ".claude/scratchpad/training-runner").glob("*.md")
    text = next(pad).read_text()
    assert f"[launch] launched {result.run_id} (test experiment 901-quick); note: smoke test\n" in text
    assert f"[finish] run {result.run_id} succeeded" in text and "best val/acc 0.9 at epoch 5" in text


def test_trainer_env_is_allow_listed(scripted, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("HSA_OVERRIDE_GFX_VERSION", "11.0.0")
    result = runs.launch("901", dry_run=True)
    assert "AWS_SECRET_ACCESS_KEY" not in result.env and result.env["HSA_OVERRIDE_GFX_VERSION"] == "11.0.0"


def test_dry_run_starts_nothing_and_creates_nothing(scripted):
    result = runs.launch("901", {"steps": 7}, dry_run=True)
    assert result.run_id is None and result.argv[result.argv.index("--steps") + 1] == "7"
    assert not paths.runs_root().exists() or not any(paths.runs_root().iterdir())


def test_a_crash_is_recorded_as_failed_with_the_end_of_stderr(scripted):
    st = wait_done(runs.launch("903").run_id)
    assert st.status == "failed" and st.exit_code == 1 and st.failure == "exited with code 1"
    assert "RuntimeError: scripted failure" in st.stderr_tail
    assert "error: scripted failure" in st.headline


def test_stop_leaves_no_process_of_the_group(scripted):
    result = runs.launch("902")
    run = open_run(paths.runs_root(), result.run_id)
    wait_until(lambda: run.metrics.exists() and run.metrics.stat().st_size > 0, what="first metrics")
    pgid = run.read_state().pgid
    stopped = runs.stop(result.run_id, grace_s=10)
    assert stopped.status == "stopped" and stopped.how == "terminated" and stopped.processes_left == 0
    assert procs.group_members(pgid) == []
    assert (run.checkpoints / "last.json").exists()  # the trainer checkpointed on SIGTERM
    assert runs.status(result.run_id).signal is None and runs.status(result.run_id).exit_code == 143
    again = runs.stop(result.run_id)
    assert again.how == "none" and "already ended" in again.message


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace(scripted):
    script = scripted / "scripts" / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    spec = (scripted / "experiments/trainers/scripted.toml").read_text()
    (scripted / "experiments/trainers/stubborn.toml").write_text(
        spec.replace('name = "scripted"', 'name = "stubborn"').replace("scripted_trainer.py", "stubborn.py")
    )
    write_experiment(scripted, "904-stubborn", "stubborn", {})
    result = runs.launch("904")
    run = open_run(paths.runs_root(), result.run_id)
    wait_until(lambda: b"up" in run.stdout.read_bytes(), what="its SIGTERM handler")  # it ignores SIGTERM from here
    stopped = runs.stop(result.run_id, grace_s=0.5)
    assert stopped.how == "killed" and stopped.processes_left == 0 and stopped.status == "stopped"
    assert runs.status(result.run_id).signal == signal.SIGKILL


def test_a_dead_supervisor_is_noticed(scripted):
    result = runs.launch("902")
    run = open_run(paths.runs_root(), result.run_id)
    state = run.read_state()
    os.kill(state.supervisor_pid, signal.SIGKILL)
    wait_until(lambda: not procs.is_alive(state.supervisor_pid, state.supervisor_started), what="supervisor death")
    # The trainer does not go on unobserved: the leash stops it with its supervisor (test_guard.py has the rest).
    wait_until(lambda: runs.status(result.run_id).status == "lost", what="lost status")
    assert "supervisor ended" in runs.status(result.run_id).failure
    assert procs.group_members(state.pgid) == []


def test_launch_refuses_when_preflight_fails(scripted):
    folder = write_experiment(scripted, "905-badpy", "scripted", {})
    text = (folder / "experiment.toml").read_text().replace("[args]", 'python = ".venv/bin/python"\n\n[args]')
    (folder / "experiment.toml").write_text(text)
    with pytest.raises(Conflict, match="pre-flight failed.*interpreter.*venv.*Fix: Create the venv"):
        runs.launch("905")
    assert not paths.runs_root().exists() or not any(paths.runs_root().iterdir())


def test_two_launches_in_the_same_second_get_their_own_folders(scripted):
    a, b = runs.launch("901"), runs.launch("901")
    assert a.run_id != b.run_id
    wait_done(a.run_id), wait_done(b.run_id)
    assert [r.status for r in runs.list_runs().runs] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".", "..", "x" * 200, "run\x00"])
def test_run_ids_that_are_not_ids_are_refused(scripted, bad):
    with pytest.raises(InvalidInput, match="not a run id"):
        runs.status(bad)


def test_unknown_run_id_says_how_to_find_one(scripted):
    with pytest.raises(NotFound, match="call list_runs"):
        runs.status("001-nothing-here")


def test_log_tail_is_bounded_and_clean(tmp_path):
    log = tmp_path / "stderr.log"
    log.write_bytes(b"\x1b[31mred\x1b[0m\x07 line\n" + b"x" * 100000 + b"\nlast\n")
    text = textlog.tail(log, lines=5, max_chars=300)
    assert len(text) <= 300 and text.endswith("last") and "\x1b" not in text


def test_a_finished_run_is_listed_from_its_state_without_reading_its_logs(scripted, monkeypatch):
    """The supervisor records the final headline; list_runs then reads no log of the run, and a
    live run's summary is kept while its logs' stat signature holds, and redone when it changes."""
    from mcp_server.curves import summary as curves_summary

    result = runs.launch("901")
    wait_done(result.run_id)
    run = open_run(paths.runs_root(), result.run_id)
    state = run.read_state()
    assert state.headline and "best val/acc 0.9 at epoch 5" in state.headline
    calls = []
    real = curves_summary.summarize
    monkeypatch.setattr(curves_summary, "summarize", lambda *a, **k: calls.append(1) or real(*a, **k))
    row = runs.list_runs().runs[0]
    assert row.headline == state.headline and calls == []
    first = runs.status(result.run_id)  # summarised by wait_done at the end: kept while nothing changes
    again = runs.status(result.run_id)
    assert calls == [] and again.latest == first.latest
    before = len(calls)
    with run.metrics.open("a") as fh:
        fh.write('{"t": 1e9, "step": 6, "epoch": 6, "split": "val", "acc": 0.95}\n')
    assert runs.status(result.run_id).latest["val/acc"] == pytest.approx(0.95)
    assert len(calls) == before + 1


FLAT_ACC_SCRIPT = """
import math
from trainkit import MetricsStream

stream = MetricsStream()
for step in range(1, 41):
    stream.log(step, "val", epoch=step, acc=0.4 + 0.005 * math.sin(step))
stream.event("done", reason="finished")
"""
FLAT_ACC_SPEC = """
name = "flat"
description = "A user's script whose accuracy never moves (tests)."
command = ["{python}", "{project_dir}/scripts/flat.py"]
primary_metric = "val/acc"
primary_mode = "max"
chance = { "val/acc" = 0.1 }
params = {}

[remedies]
chance = "this spec's own chance remedy"
"""


def test_an_experiment_s_chance_level_reaches_the_diagnosis_of_its_run(project):
    """0.4 is no 1/k: only the level the experiment gives (over the spec's 0.1) names it chance."""
    (project / "scripts").mkdir()
    (project / "scripts" / "flat.py").write_text(FLAT_ACC_SCRIPT)
    shutil.copy(REPO / "trainers" / "trainkit.py", project / "scripts")
    (project / "experiments" / "trainers").mkdir(parents=True)
    (project / "experiments" / "trainers" / "flat.toml").write_text(FLAT_ACC_SPEC)
    toml = write_experiment(project, "921-flat", "flat", {}) / "experiment.toml"
    toml.write_text('chance = { "val/acc" = 0.4 }\n' + toml.read_text())
    write_experiment(project, "922-flat-spec-chance", "flat", {})
    found = {}
    for exp in ("921", "922"):
        result = runs.launch(exp)
        assert wait_done(result.run_id).status == "succeeded"
        assert open_run(paths.runs_root(), result.run_id).read_manifest().chance == {
            "val/acc": 0.4 if exp == "921" else 0.1
        }
        found[exp] = {f.rule: f for f in runs.summary(result.run_id)[1].findings}
    chance = found["921"]["chance"]
    assert "chance 0.4 (given)" in chance.evidence and chance.remedy == "this spec's own chance remedy"
    assert "chance" not in found["922"]  # at the spec's 0.1 alone, 0.4 is learning
