"""Every Slurm job state, as trainguard reports it. The single-node test cluster cannot produce a
cgroup OOM, a node failure, a preemption or a boot failure, so these states come from a
scripted `SlurmCommands` (the backend's one seam to Slurm's client commands) answering
`squeue` as Slurm does; the rest of the path (the run folder, refresh, diagnose_run) is real.
tests/slurm/ runs the states a real cluster produces here."""

from __future__ import annotations

import getpass
import subprocess
import time

import pytest

from mcp_server import diagnose
from mcp_server.backends import slurm
from mcp_server.rundir import Manifest, RunState, create_run_dir, write_json_atomic


class ScriptedSlurm(slurm.SlurmCommands):
    """Answers squeue with the given job lines and records every command."""

    def __init__(self, lines: list[str], squeue_code: int = 0):
        self.lines, self.squeue_code, self.calls = lines, squeue_code, []

    def run(self, argv, timeout=30.0, input_text=None, cwd=None):
        self.calls.append(argv)
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(
                argv,
                self.squeue_code,
                "\n".join(self.lines) + "\n",
                "" if self.squeue_code == 0 else "slurm_load_jobs error: timed out",
            )
        return subprocess.CompletedProcess(argv, 1, "", "not scripted")


def slurm_run(tmp_path, status="running"):
    run = create_run_dir(tmp_path / "runs", "950-slurm")
    manifest = Manifest(
        run_id=run.run_id,
        created_at="2026-12-01T00:00:00",
        experiment="950-slurm",
        experiment_dir=str(tmp_path),
        source="project",
        title="t",
        trainer="scripted",
        primary_metric="val/acc",
        argv=["srun", "python", "train.py"],
        env={},
        cwd=str(tmp_path),
        project_dir=str(tmp_path),
        agent="training-runner",
        backend="slurm",
        job_id="77",
    )
    run.write_state(RunState(status=status, updated_at=time.time(), job_id="77"))
    write_json_atomic(run.manifest, manifest.model_dump(mode="json"))
    return run


def line(state: str, run_id: str, reason: str = "None") -> str:
    return f"77|{state}|{reason}|{slurm.job_name(run_id)}|{getpass.getuser()}"


@pytest.mark.parametrize(
    ("slurm_state", "status", "failure_class"),
    [
        ("TIMEOUT", "failed", "slurm_time_limit"),
        ("OUT_OF_MEMORY", "failed", "slurm_memory_limit"),
        ("NODE_FAIL", "failed", "slurm_node_failure"),
        ("BOOT_FAIL", "failed", "slurm_node_failure"),
        ("PREEMPTED", "failed", "slurm_preempted"),
        ("CANCELLED", "stopped", None),
        ("FAILED", "failed", None),
        ("DEADLINE", "failed", None),
    ],
)
def test_a_job_slurm_ended_is_recorded_with_its_cause_and_diagnosed(tmp_path, slurm_state, status, failure_class):
    run = slurm_run(tmp_path)
    backend = slurm.SlurmBackend(ScriptedSlurm([line(slurm_state, run.run_id)]), slurm.JobTable())
    backend.jobs.commands = backend.commands
    state = backend.refresh(run, run.read_state())
    assert state.status == status and f"Slurm: {slurm_state}" in state.failure
    assert run.read_state().status == status and run.read_state().slurm_state == slurm_state  # recorded
    if failure_class:
        found = diagnose.diagnose(run, run.read_state())
        assert found.failure_class == failure_class and found.evidence[0].source == "slurm", found


@pytest.mark.parametrize("pending", ["PENDING", "REQUEUED", "SUSPENDED"])
def test_a_pending_job_is_queued_with_slurms_reason_and_nothing_is_written(tmp_path, pending):
    run = slurm_run(tmp_path, status="queued")
    before = run.state_file.read_bytes()
    backend = slurm.SlurmBackend(ScriptedSlurm([line(pending, run.run_id, "Priority")]), slurm.JobTable())
    backend.jobs.commands = backend.commands
    state = backend.refresh(run, run.read_state())
    assert (state.status, state.slurm_state, state.slurm_reason) == ("queued", pending, "Priority")
    assert run.state_file.read_bytes() == before  # the supervisor owns the file while the job lives


def test_an_unanswering_squeue_never_makes_a_job_lost(tmp_path):
    run = slurm_run(tmp_path)
    commands = ScriptedSlurm([line("RUNNING", run.run_id)])
    backend = slurm.SlurmBackend(commands, slurm.JobTable(commands))
    assert backend.refresh(run, run.read_state()).slurm_state == "RUNNING"
    commands.squeue_code, commands.lines = 1, []  # slurmctld restarting
    for _ in range(5):
        assert backend.jobs.get(run.path.parent, "77", fresh=True).state == "RUNNING"  # the last view stands
        assert backend.refresh(run, run.read_state()).status == "running"
    commands.squeue_code = 0  # answering again, without the job: gone only after three answers
    for _ in range(2):
        backend.jobs.get(run.path.parent, "77", fresh=True)
        assert backend.refresh(run, run.read_state()).status == "running"
    backend.jobs.get(run.path.parent, "77", fresh=True)
    assert backend.refresh(run, run.read_state()).status == "lost"


def test_stop_cancels_only_a_job_named_for_the_run_and_owned_by_the_user(tmp_path):
    run = slurm_run(tmp_path)
    commands = ScriptedSlurm([f"77|RUNNING|None|someone-elses-job|{getpass.getuser()}"])
    backend = slurm.SlurmBackend(commands, slurm.JobTable(commands))
    with pytest.raises(slurm.Conflict, match="not this run's"):
        backend.stop(run, run.read_state(), grace_s=1)
    assert not [c for c in commands.calls if c[0] == "scancel"]


def test_sbatch_options_are_validated_whole():
    from pydantic import ValidationError

    from mcp_server.backends.model import Resources

    for bad in (
        {"partition": "gpu\n#SBATCH --uid=0"},
        {"time": "1:00; rm -rf ~"},
        {"mem": "16G --wrap=x"},
        {"extra": {"chdir": "/"}},
        {"extra": {"comment": "a b"}},
        {"account": "-x"},
    ):
        with pytest.raises(ValidationError):
            Resources(**bad)
    ok = Resources(partition="gpu", account="lab", time="1-12:00:00", mem="64G", extra={"mail-type": "END,FAIL"})
    assert ok.time == "1-12:00:00"
