"""The Slurm backend: runs go to a real Slurm through its own commands and states.

`start` writes `job.sbatch` into the run folder and submits it with `sbatch`. Inside the
allocation the same supervisor runs (`python -m mcp_server.supervisor RUN_DIR`), so the
watchdog, metrics and state work as they do locally; the trainer starts under `srun` (several
processes: one torchrun per node, `--standalone` on one node, a c10d rendezvous from the
Slurm environment on several). Slurm is the queue: no local slot is taken.

Slurm's own view of a job comes from one batched `squeue` call for all the project's live jobs
(`sacct` for jobs squeue has forgotten, where accounting answers), polled with back-off and
shared by every run of the project (`JobTable`). The supervisor's `state.json` says how the
trainer ended; Slurm's state says what happened when the supervisor could not (a time limit, a
memory limit, a node failure, a preemption, a cancel). A restarted server re-attaches to its
jobs by the job id in `state.json`.

Every value written into `job.sbatch` was validated whole (backends.model.Resources); no shell
runs anything of the user's: the script only execs the supervisor.

Slurm's client commands run through `SlurmCommands`, the one seam where a remote runner (SSH
to a login node) can be added.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_server import paths, safefiles
from mcp_server.backends.model import Resources
from mcp_server.checks import Check
from mcp_server.errors import Conflict, TrainguardError
from mcp_server.rundir import TERMINAL, RunDir, RunState, all_runs, write_json_atomic
from mcp_server.specs import TrainerSpec

log = logging.getLogger("trainguard.backends.slurm")

COMMAND_TIMEOUT_S = 30.0
POLL_MIN_S, POLL_MAX_S = 2.0, 30.0  # the batched poll's back-off: doubled while nothing changes
SHARED_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cephfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "panfs",
        "wekafs",
        "fuse.weka",
        "smbfs",
        "cifs",
    }
)
RDZV_PORT = 29500
JOB_ID_RE = re.compile(r"\d{1,12}(_\d{1,8})?")

# Slurm's job states, as trainguard reports them: status, what happened, what to do.
PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "CONFIGURING", "RESIZING"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})
ENDED: dict[str, tuple[str, str, str]] = {
    "COMPLETED": (
        "lost",
        "the job completed but its supervisor recorded no outcome",
        "Read supervisor.log in the run folder.",
    ),
    "FAILED": ("failed", "the job failed (Slurm: FAILED)", "diagnose_run shows the trainer's error."),
    "CANCELLED": (
        "stopped",
        "the job was cancelled (Slurm: CANCELLED, by scancel or an administrator)",
        "resume_run continues it from its last checkpoint.",
    ),
    "TIMEOUT": (
        "failed",
        "the job reached its time limit (Slurm: TIMEOUT)",
        "Ask for more time (resources.time), or requeue=true to continue from the checkpoint by itself.",
    ),
    "OUT_OF_MEMORY": (
        "failed",
        "the job exceeded its memory limit (Slurm: OUT_OF_MEMORY, the cgroup's OOM killer)",
        "Ask for more memory (resources.mem) or lower batch_size.",
    ),
    "NODE_FAIL": (
        "failed",
        "the job's node failed (Slurm: NODE_FAIL)",
        "resume_run continues it from its last checkpoint, on another node.",
    ),
    "PREEMPTED": (
        "failed",
        "the job was preempted by a higher-priority job (Slurm: PREEMPTED)",
        "requeue=true resumes it by itself; else resume_run.",
    ),
    "BOOT_FAIL": ("failed", "the job's node failed to boot (Slurm: BOOT_FAIL)", "Launch it again."),
    "DEADLINE": ("failed", "the job missed its deadline (Slurm: DEADLINE)", "Launch it with a later deadline."),
    "REVOKED": ("stopped", "the job was revoked (Slurm: REVOKED, run on a sibling cluster)", "Launch it again."),
    "SPECIAL_EXIT": ("failed", "the job ended in SPECIAL_EXIT and is held", "Release or cancel it with scontrol."),
}


class SlurmCommands:
    """Runs Slurm's client commands: the one seam for submitting from elsewhere (SSH) later."""

    def run(
        self,
        argv: list[str],
        timeout: float = COMMAND_TIMEOUT_S,
        input_text: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:
        """Run one command (never a shell), its output captured.

        Raises:
            TrainguardError: the command is missing or hangs.
        """
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=cwd,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise TrainguardError(
                f"{argv[0]} is not on PATH: the Slurm backend runs where Slurm's client commands "
                "work (a login node); install slurm-client or use backend='local'."
            ) from None
        except subprocess.TimeoutExpired:
            raise TrainguardError(
                f"{argv[0]} did not answer within {timeout:.0f} s: is slurmctld up? (`sinfo` shows it)"
            ) from None


COMMANDS = SlurmCommands()


@dataclass
class JobInfo:
    job_id: str
    state: str
    reason: str | None
    name: str | None = None  # tg-<run_id> for ours
    user: str | None = None


def job_name(run_id: str) -> str:
    return f"tg-{run_id}"


class SlurmUnavailable(TrainguardError):
    """squeue did not answer: Slurm's view of the jobs is unknown for now (not "gone")."""


@dataclass
class _Table:
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    fetched_at: float = -1e9
    interval: float = POLL_MIN_S
    misses: dict[str, int] = field(default_factory=dict)  # answered queries in a row without the job


MISSES_FOR_GONE = 3  # a job is gone only when this many answered queries in a row lack it


class JobTable:
    """Slurm's view of the project's jobs: one `squeue` for all of them (then `sacct` for the
    ones squeue forgot), at most every few seconds, the interval doubling while nothing changes."""

    def __init__(self, commands: SlurmCommands = COMMANDS):
        self.commands = commands
        self._tables: dict[Path, _Table] = {}
        self._lock = threading.Lock()

    def get(self, runs_root: Path, job_id: str, fresh: bool = False) -> JobInfo | None:
        """Slurm's view of `job_id`, or None once Slurm has answered MISSES_FOR_GONE times in a
        row without it.

        Raises:
            SlurmUnavailable: Slurm does not answer and nothing is known of the job yet.
        """
        with self._lock:
            table = self._tables.setdefault(runs_root, _Table())
            now = time.monotonic()
            if fresh or job_id not in table.jobs or now - table.fetched_at >= table.interval:
                ids = self._live_ids(runs_root) | {job_id}
                try:
                    jobs = self._query(sorted(ids))
                except SlurmUnavailable:
                    if job_id in table.jobs:
                        return table.jobs[job_id]  # the last answer stands until Slurm answers again
                    raise
                changed = {k: (v.state, v.reason) for k, v in jobs.items()} != {
                    k: (v.state, v.reason) for k, v in table.jobs.items() if k in jobs
                }
                table.interval = POLL_MIN_S if changed else min(POLL_MAX_S, table.interval * 2)
                table.misses = {i: 0 if i in jobs else table.misses.get(i, 0) + 1 for i in ids}
                table.jobs = {i: jobs.get(i) or table.jobs[i] for i in ids if i in jobs or i in table.jobs}
                table.fetched_at = now
            if table.misses.get(job_id, 0) >= MISSES_FOR_GONE:
                return None
            info = table.jobs.get(job_id)
            if info is None:  # not seen yet (just submitted): ask again next time
                table.fetched_at = -1e9
            return info

    def gone(self, runs_root: Path, job_id: str) -> bool:
        """Slurm answered MISSES_FOR_GONE times in a row without the job."""
        return self._tables.get(runs_root, _Table()).misses.get(job_id, 0) >= MISSES_FOR_GONE

    @staticmethod
    def _live_ids(runs_root: Path) -> set[str]:
        ids = set()
        for run in all_runs(runs_root):
            try:
                state = run.read_state()
            except (OSError, TrainguardError):
                continue
            if state.job_id and state.status not in TERMINAL:
                ids.add(state.job_id)
        return ids

    def _query(self, ids: list[str]) -> dict[str, JobInfo]:
        out = self.commands.run(
            ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T|%r|%j|%u"]
        )
        if out.returncode != 0 and "Invalid job id" not in out.stderr:  # that one: none of them is known
            raise SlurmUnavailable(f"squeue failed: {out.stderr.strip()[:300] or out.returncode}")
        jobs = {}
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 5 and parts[0] in ids:
                jobs[parts[0]] = JobInfo(
                    parts[0], parts[1], None if parts[2] in ("None", "") else parts[2], parts[3], parts[4]
                )
        missing = [i for i in ids if i not in jobs]
        if missing:  # ended longer ago than MinJobAge: accounting may still know them
            acct = self.commands.run(
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "--allocations",
                    f"--jobs={','.join(missing)}",
                    "--format=JobID,State,Reason,JobName,User",
                ]
            )
            for line in acct.stdout.splitlines() if acct.returncode == 0 else []:
                parts = line.strip().split("|")
                if len(parts) >= 5 and parts[0] in missing:
                    state = parts[1].split()[0]  # "CANCELLED by 1000"
                    jobs[parts[0]] = JobInfo(parts[0], state, parts[2] or None, parts[3], parts[4])
        return jobs


JOBS = JobTable()


class SlurmBackend:
    name = "slurm"

    def __init__(self, commands: SlurmCommands = COMMANDS, jobs: JobTable = JOBS):
        self.commands = commands
        self.jobs = jobs
        self._nudged: set[tuple[str, int]] = set()

    # -- pre-flight --------------------------------------------------------------------------

    def check(self, resources: Resources, spec: TrainerSpec, config: dict[str, Any], gpus: int) -> list[Check]:
        checks = []
        try:
            partitions = self._partitions()
        except TrainguardError as exc:
            return [Check(name="slurm", verdict="fail", detail=str(exc), fix="Run it on a login node of the cluster.")]
        default = next((p for p in partitions.values() if p["default"]), None)
        name = resources.partition or (default["name"] if default else None)
        part = partitions.get(name or "")
        if part is None:
            checks.append(
                Check(
                    name="slurm",
                    verdict="fail",
                    detail=f"partition {name!r} does not exist; the partitions are "
                    f"{', '.join(sorted(partitions)) or 'none'}.",
                    fix=f"Pass resources={{'partition': ...}} with one of {sorted(partitions)}.",
                )
            )
            return checks
        asked, limit = _minutes(resources.time), _minutes(part["time"])
        if asked is not None and limit is not None and asked > limit:
            checks.append(
                Check(
                    name="slurm",
                    verdict="fail",
                    detail=f"time {resources.time} is over partition {name}'s limit {part['time']}.",
                    fix=f"Ask for at most {part['time']}, with requeue=true to go on after it.",
                )
            )
        if resources.gpus:
            have = _gres_gpus(part["gres"])
            if have < resources.gpus:
                checks.append(
                    Check(
                        name="slurm",
                        verdict="fail",
                        detail=f"{resources.gpus} GPUs per node asked; partition {name}'s nodes have "
                        f"{have} ({part['gres'] or 'no GRES'}).",
                        fix="Pick a partition with GPUs (sinfo -o '%P %G'), or fewer gpus.",
                    )
                )
        if resources.gpus and resources.nproc > resources.gpus:
            checks.append(
                Check(
                    name="slurm",
                    verdict="fail",
                    detail=f"{resources.nproc} processes per node but {resources.gpus} GPUs per node.",
                    fix=f"Pass nproc={resources.gpus}, one process per GPU.",
                )
            )
        world = resources.nproc * resources.nodes
        if world > 1 and (not spec.command or spec.command[0] != "{python}"):
            checks.append(
                Check(
                    name="slurm",
                    verdict="fail",
                    detail=f"several processes start through torchrun, which runs a Python script; "
                    f"trainer {spec.name}'s command starts with {spec.command[0]!r}.",
                    fix='Make the spec\'s command ["{python}", "path/to/train.py", ...], or nproc=1.',
                )
            )
        batch = config.get(spec.memory.batch_param if spec.memory else "batch_size")
        if world > 1 and isinstance(batch, int) and not isinstance(batch, bool) and batch % world:
            checks.append(
                Check(
                    name="slurm",
                    verdict="fail",
                    detail=f"batch_size {batch} is the global batch; it does not split over {world} ranks.",
                    fix=f"Use a multiple of {world}.",
                )
            )
        checks.append(self._accounting_check(resources))
        checks.append(_shared_fs_check(paths.runs_root()))
        if not any(c.verdict == "fail" for c in checks):
            checks.insert(
                0,
                Check(
                    name="slurm",
                    verdict="pass",
                    detail=f"partition {name} (limit {part['time']}, {part['nodes']} nodes, GRES "
                    f"{part['gres'] or 'none'}); {resources.nodes} node(s) x {resources.nproc} "
                    f"process(es)" + (f", time {resources.time}" if resources.time else ""),
                ),
            )
        return checks

    def _partitions(self) -> dict[str, dict[str, Any]]:
        out = self.commands.run(["sinfo", "--noheader", "--format=%P|%l|%G|%D|%a"])
        if out.returncode != 0:
            raise TrainguardError(f"sinfo failed: {out.stderr.strip()[:300] or out.returncode}")
        found: dict[str, dict[str, Any]] = {}
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 5:
                continue
            name = parts[0].rstrip("*")
            found[name] = {
                "name": name,
                "default": parts[0].endswith("*"),
                "time": parts[1],
                "gres": "" if parts[2] == "(null)" else parts[2],
                "nodes": parts[3],
                "up": parts[4] == "up",
            }
        return found

    def _accounting_check(self, resources: Resources) -> Check:
        if not resources.account and not resources.qos:
            return Check(name="slurm_account", verdict="pass", detail="no account or qos asked: Slurm's defaults")
        out = self.commands.run(
            [
                "sacctmgr",
                "--noheader",
                "--parsable2",
                "show",
                "associations",
                f"user={os.environ.get('USER') or os.environ.get('LOGNAME') or ''}",
                "format=Account,QOS",
            ]
        )
        if out.returncode != 0 or "not running a supported accounting_storage" in out.stdout + out.stderr:
            return Check(
                name="slurm_account",
                verdict="warn",
                detail="account and qos not checked: Slurm's accounting does not answer here",
                fix="sbatch checks them at submission; a refused submission says why.",
            )
        pairs = [line.split("|") for line in out.stdout.splitlines() if "|" in line]
        accounts = {a for a, _ in pairs}
        qos = {q for _, qs in pairs for q in qs.split(",")}
        bad = []
        if resources.account and resources.account not in accounts:
            bad.append(f"account {resources.account!r} (yours: {', '.join(sorted(accounts)) or 'none'})")
        if resources.qos and resources.qos not in qos:
            bad.append(f"qos {resources.qos!r} (yours: {', '.join(sorted(qos)) or 'none'})")
        if bad:
            return Check(
                name="slurm_account",
                verdict="fail",
                detail="not yours: " + "; ".join(bad),
                fix="Pass an account and qos from `sacctmgr show associations user=$USER`.",
            )
        return Check(name="slurm_account", verdict="pass", detail="account and qos are yours")

    # -- the command ---------------------------------------------------------------------------

    def trainer_argv(self, argv: list[str], resources: Resources, run: RunDir) -> list[str]:
        srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={resources.nodes}", "--ntasks-per-node=1"]
        if resources.nproc * resources.nodes == 1:
            return [*srun, *argv]
        python, *rest = argv
        where = (
            ["--standalone"]
            if resources.nodes == 1
            else [
                "--nnodes",
                str(resources.nodes),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                "{rdzv_endpoint}",
                "--rdzv-id",
                "{rdzv_id}",
            ]
        )
        return [
            *srun,
            python,
            "-m",
            "torch.distributed.run",
            *where,
            "--nproc-per-node",
            str(resources.nproc),
            "--log-dir",
            str(run.path / "torchrun"),
            *rest,
        ]

    def script(self, run: RunDir, resources: Resources) -> str:
        """The batch script: validated #SBATCH lines, then the supervisor."""
        r = resources
        options = [
            f"--job-name={job_name(run.run_id)}",
            f"--output={run.supervisor_log}",
            "--open-mode=append",
            f"--nodes={r.nodes}",
            "--ntasks-per-node=1",
            f"--signal=B:USR1@{r.signal_s}",
            "--requeue" if r.requeue else "--no-requeue",
        ]
        for flag, value in (
            ("partition", r.partition),
            ("account", r.account),
            ("qos", r.qos),
            ("time", r.time),
            ("mem", r.mem),
            ("constraint", r.constraint),
        ):
            if value is not None:
                options.append(f"--{flag}={value}")
        if r.gpus:
            options.append(f"--gpus-per-node={r.gpus}")
        if r.cpus_per_task:
            options.append(f"--cpus-per-task={r.cpus_per_task}")
        options += [f"--{key}={value}" for key, value in sorted(r.extra.items())]
        lines = ["#!/bin/sh", *(f"#SBATCH {option}" for option in options)]
        if paths.SOURCE_TREE:
            lines.append(f"PYTHONPATH={shlex.quote(str(paths.PLUGIN_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}")
            lines.append("export PYTHONPATH")
        lines.append(f"exec {shlex.quote(sys.executable)} -m mcp_server.supervisor {shlex.quote(str(run.path))}")
        return "\n".join(lines) + "\n"

    def log_files(self, run: RunDir) -> dict[str, Path]:
        return {"sbatch": run.path / "job.sbatch", "torchrun": run.path / "torchrun"}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, run: RunDir) -> RunState:
        manifest = run.read_manifest()
        if any(ch.isspace() or ch == "%" for ch in str(run.path)):
            raise TrainguardError(
                f"the run folder {run.path} holds a space or a %, which #SBATCH lines cannot carry; "
                "set TRAINGUARD_RUNS_DIR to a plain path."
            )
        script = run.path / "job.sbatch"
        safefiles.write_atomic(script, self.script(run, manifest.resources).encode())  # never through a link
        try:
            out = self.commands.run(["sbatch", "--parsable", str(script)], cwd=run.path)
        except TrainguardError:  # it may have been accepted: no job may outlive the folder it needs
            self.commands.run(["scancel", f"--name={job_name(run.run_id)}"])
            raise
        job_id = out.stdout.strip().split(";")[0]
        if out.returncode != 0 or not JOB_ID_RE.fullmatch(job_id):
            raise Conflict(
                f"sbatch refused the job: {out.stderr.strip()[:500] or out.stdout.strip()[:500]}. "
                "Nothing was launched. Fix the resources it names (pre-flight lists the partitions)."
            )
        try:  # submitted: from here on the run exists, whatever else fails
            with run.lock():
                state = run.read_state()
                state.job_id = job_id
                if state.status == "starting":  # the supervisor may be up already (it records the id too)
                    state.status, state.queued_at = "queued", time.time()
                run.write_state(state)
            write_json_atomic(run.manifest, manifest.model_copy(update={"job_id": job_id}).model_dump(mode="json"))
            return self._merged(state, self.jobs.get(run.path.parent, job_id, fresh=True))
        except (OSError, TrainguardError) as exc:
            log.warning("job %s submitted; recording it failed: %s", job_id, exc)
            return run.read_state().model_copy(update={"job_id": job_id, "status": "queued"})

    def refresh(self, run: RunDir, state: RunState) -> RunState:
        if state.status in TERMINAL or not state.job_id:
            return state
        try:
            info = self.jobs.get(run.path.parent, state.job_id)
        except SlurmUnavailable as exc:
            log.warning("run %s: %s", run.run_id, exc)
            return state  # unknown for now, not ended
        if info is None:
            if not self.jobs.gone(run.path.parent, state.job_id):
                return state
            return self._record_end(
                run,
                "lost",
                f"Slurm no longer knows job {state.job_id} (ended longer ago than "
                "MinJobAge, and no accounting answers) and its supervisor recorded no outcome",
            )
        if info.state in ENDED:
            latest = run.read_state()  # the supervisor may have recorded the outcome meanwhile
            if latest.status in TERMINAL:
                return latest.model_copy(update={"slurm_state": info.state})
            status, failure, _ = ENDED[info.state]
            return self._record_end(run, status, failure, info.state)
        if info.state == "PENDING" and info.reason == "BeginTime" and state.requeues:
            self._start_now(state)
        return self._merged(state, info)

    def _start_now(self, state: RunState) -> None:
        """A requeued job waits out Slurm's requeue delay (BeginTime, about 2 minutes) unless
        told to start now: once per requeue, best effort (a cluster may refuse it)."""
        key = (state.job_id or "", state.requeues)
        if key not in self._nudged:
            self._nudged.add(key)
            self.commands.run(["scontrol", "update", f"JobId={state.job_id}", "StartTime=now"])

    @staticmethod
    def _merged(state: RunState, info: JobInfo | None) -> RunState:
        """Slurm's live view over the supervisor's state, in memory (the supervisor owns the file
        while the job lives)."""
        if info is None:
            return state
        update: dict[str, Any] = {"slurm_state": info.state, "slurm_reason": info.reason}
        if info.state in PENDING_STATES:
            update["status"] = "queued"
        elif info.state in RUNNING_STATES and state.status == "starting":
            update["status"] = "queued"  # allocated; the supervisor is starting the trainer
        return state.model_copy(update=update)

    def _record_end(self, run: RunDir, status: str, failure: str, slurm_state: str | None = None) -> RunState:
        with run.lock():
            state = run.read_state()
            if state.status in TERMINAL:
                return state
            state.status, state.failure, state.finished_at = status, failure, time.time()  # type: ignore[assignment]
            state.slurm_state = slurm_state
            run.write_state(state)
        return state

    def stop(self, run: RunDir, state: RunState, grace_s: float) -> str:
        if not state.job_id:
            return "gone"
        info = self.jobs.get(run.path.parent, state.job_id, fresh=True)
        if info is None or info.state in ENDED:
            return "gone"
        if info.name != job_name(run.run_id) or info.user != getpass.getuser():
            raise Conflict(
                f"job {state.job_id} is {info.name!r} of {info.user!r}, not this run's "
                f"({job_name(run.run_id)!r} of {getpass.getuser()!r}): nothing cancelled. The run folder "
                "may come from another cluster; cancel its job there."
            )
        if info.state in PENDING_STATES:
            self.commands.run(["scancel", state.job_id])
            self.jobs.get(run.path.parent, state.job_id, fresh=True)
            return "cancelled while queued"
        # SIGTERM to the job's steps (the trainer, through srun), never the batch step: the
        # supervisor records the stop; the trainer writes its checkpoint.
        self.commands.run(["scancel", "--signal=TERM", state.job_id])
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if run.read_state().status in TERMINAL:
                return "terminated"
            info = self.jobs.get(run.path.parent, state.job_id, fresh=True)
            if info is None or info.state in ENDED:
                return "terminated"
        self.commands.run(["scancel", state.job_id])
        return "killed"

    def processes_left(self, run: RunDir, state: RunState, wait_s: float = 20.0) -> int:
        """1 while Slurm still runs the job, after waiting up to `wait_s` for it to end (its
        batch script exits and Slurm completes it a moment after the trainer has stopped)."""
        if not state.job_id:
            return 0
        deadline = time.monotonic() + wait_s
        while True:
            info = self.jobs.get(run.path.parent, state.job_id, fresh=True)
            if info is None or info.state in ENDED:
                return 0
            if time.monotonic() >= deadline:
                return 1
            time.sleep(0.5)


def _minutes(text: str | None) -> float | None:
    """A Slurm time (minutes, MM:SS, H:MM:SS, D-HH[:MM[:SS]]) in minutes; None for none or infinite."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "N/A"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def _gres_gpus(gres: str) -> int:
    """GPUs per node in sinfo's GRES column, e.g. "gpu:a100:4(S:0-1)" -> 4."""
    best = 0
    for item in gres.split(","):
        m = re.fullmatch(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)(?:\(.*\))?", item.strip())
        if m:
            best = max(best, int(m.group(1)))
    return best


def _shared_fs_check(root: Path) -> Check:
    """The run folder must be on a filesystem the compute nodes share."""
    where = root if root.exists() else root.parent
    fstype, mount = _filesystem(where.resolve())
    if fstype in SHARED_FILESYSTEMS:
        return Check(name="shared_filesystem", verdict="pass", detail=f"{root} is on {fstype} ({mount})")
    return Check(
        name="shared_filesystem",
        verdict="warn",
        detail=f"{root} is on {fstype or 'an unknown filesystem'} ({mount}), which looks local to this "
        "machine: a compute node may not see the run folder",
        fix="Set TRAINGUARD_RUNS_DIR (or the project) to a shared filesystem (home, scratch, project space).",
    )


def _filesystem(path: Path) -> tuple[str | None, str]:
    best, fstype = "", None
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                        best, fstype = mount, parts[2]
    except OSError:
        return None, "?"
    return fstype, best or "/"


def rendezvous_port(job_id: str) -> int:
    """torchrun's c10d port for a job: 29500 plus the job id modulo 1000, so two jobs whose first
    node is the same machine do not collide."""
    return RDZV_PORT + int(re.sub(r"\D", "", job_id) or 0) % 1000


def restart_argv(argv: list[str], flag: str | None, checkpoint: Path | None) -> list[str]:
    """The trainer's argv for a requeued job: its resume flag pointing at the latest checkpoint."""
    if not flag or checkpoint is None:
        return argv
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], str(checkpoint), *argv[i + 2 :]]
    return [*argv, flag, str(checkpoint)]


def resolve_rendezvous(argv: list[str], env: dict[str, str], commands: SlurmCommands = COMMANDS) -> list[str]:
    """Fill torchrun's multi-node rendezvous from the Slurm allocation: the first node, the job id."""
    if "{rdzv_endpoint}" not in argv and "{rdzv_id}" not in argv:
        return argv
    nodes = commands.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")]).stdout.split()
    head = nodes[0] if nodes else "localhost"
    job = env.get("SLURM_JOB_ID", "0")
    return [a.replace("{rdzv_endpoint}", f"{head}:{rendezvous_port(job)}").replace("{rdzv_id}", job) for a in argv]


SLURM = SlurmBackend()
