"""Run supervisor: the small process that owns one training run from start to finish.

`launch_run` starts `python -m mcp_server.supervisor RUN_DIR` in a session of its own, so the
run outlives the MCP server (a Claude Code session may end mid-run). The supervisor starts
the trainer in a further process group with stdin closed and output to files, records its
pid and start time, waits for it, and records how it ended: the exit code and status reach
`state.json` and the scratchpad even when no server is running at that moment.

The trainer is leashed to the supervisor (`procs.leashed`: it gets SIGTERM, and checkpoints,
if the supervisor is killed) and inherits the supervisor's slot lock, so its slot stays taken
until the trainer too has exited. A file of reserved space in the run folder is given back
if the disk fills, so the outcome (`disk full on ...`) can still be written.

It imports neither the MCP SDK nor torch.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mcp_server import budget, gpu, ledger, procs, safefiles, scratchpad, slots
from mcp_server.backends import slurm
from mcp_server.errors import TrainguardError
from mcp_server.rundir import Manifest, RunDir, RunState
from mcp_server.watchdog import Watchdog

if TYPE_CHECKING:
    from mcp_server.curves.summary import CurveSummary

log = logging.getLogger("trainguard.supervisor")
POLL_S = 0.5
QUEUE_POLL_S = 0.25
GPU_SAMPLE_S = 10.0
RESERVE_BYTES = 1 * 2**20  # given back when the disk is full, so the outcome can be written
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def classify(returncode: int, stop_requested: bool) -> tuple[str, int | None, int | None, str | None]:
    """Map a trainer's return code to (status, exit_code, signal, failure)."""
    if returncode < 0:
        sig = -returncode
        if stop_requested:
            return "stopped", None, sig, None
        return "failed", None, sig, f"killed by signal {signal.Signals(sig).name}"
    if stop_requested:
        return "stopped", returncode, None, None
    if returncode == 0:
        return "succeeded", 0, None, None
    return "failed", returncode, None, f"exited with code {returncode}"


def _reserve(run: RunDir) -> Path:
    path = run.path / ".reserve"
    with safefiles.open_append(path) as fh:
        fh.write(b"\0" * RESERVE_BYTES)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def supervise(run: RunDir) -> int:
    """Start the run's trainer, wait for it and record the outcome. Returns the trainer's code."""
    manifest = run.read_manifest()
    in_slurm = manifest.backend == "slurm"
    with run.lock():  # under Slurm the server may be recording the job id at this moment
        state = run.read_state()
        if in_slurm:
            state.job_id = os.environ.get("SLURM_JOB_ID") or state.job_id
        state.supervisor_pid = os.getpid()
        state.supervisor_started = procs.start_time(os.getpid())
    # A stop for this run signals the trainer's group; the supervisor must outlive it to
    # record the outcome, so it ignores the polite signals and only SIGKILL ends it early.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _reserve(run)
        with run.lock():
            run.write_state(state)  # the supervisor's own identity, before anything else can go wrong
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        state.status = "failed"
        state.failure = safefiles.disk_full(run.path) or f"disk full on {run.path}: {exc.strerror}"
        state.finished_at = time.time()
        _write_outcome(run, state)
        return 1
    # Held (open) until this process has recorded the outcome, and by the trainer's copy while it
    # lives: the kernel releases the lock when the last of the two closes it.
    if in_slurm:  # Slurm allocated the resources: no local slot, and the trainer gets the allocation's view
        held: list[tuple[int, IO[bytes]]] | None = None if run.stop_marker.exists() else []
        env = manifest.env | {k: v for k, v in os.environ.items() if k.startswith(SLURM_ENV_PREFIXES)}
        argv = slurm.resolve_rendezvous(_restart_argv(run, manifest), env)
        signal.signal(signal.SIGUSR1, _time_limit_ahead)  # #SBATCH --signal=B:USR1@N
    else:
        try:
            held = _take_slots(run, manifest, state)
        except TrainguardError as exc:
            state.status, state.failure, state.finished_at = "failed", str(exc), time.time()
            _finish(run, manifest, state)
            return 1
        argv = manifest.argv
    if held is None:  # cancelled while queued
        state.status, state.finished_at = "stopped", time.time()
        state.stopped_because = run.stop_request().get("because")
        _finish(run, manifest, state)
        return 0
    if not in_slurm:
        state.slots = [i for i, _ in held]
        env = manifest.env | _device_env(manifest, state.slots)
    try:
        with safefiles.open_append(run.stdout) as out, safefiles.open_append(run.stderr) as err:
            proc = subprocess.Popen(
                procs.leashed(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=manifest.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(fh.fileno() for _, fh in held),  # the trainer holds its slots too
            )
    except (OSError, TrainguardError) as exc:
        state.status, state.failure, state.finished_at = "failed", f"could not start the trainer: {exc}", time.time()
        _finish(run, manifest, state)
        return 127
    procs.wait_unleashed(proc.pid)
    _TRAINER.update(run_id=run.run_id, pid=proc.pid)
    state.status = "running"
    state.pid, state.pgid = proc.pid, proc.pid
    state.pid_started = procs.start_time(proc.pid)
    state.started_at = time.time()
    run.write_state(state)

    stopped_by, full = _watch(run, manifest, state, proc)
    returncode = proc.wait()
    # Grandchildren (data-loader workers...) may outlive the trainer; none may stay behind.
    procs.RunProcesses(run.run_id, proc.pid, state.pid_started, str(run.path)).stop(grace_s=2.0)
    state.status, state.exit_code, state.signal, state.failure = classify(returncode, run.stop_marker.exists())
    signalled = returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
    if (
        in_slurm
        and manifest.resources.requeue
        and signalled
        and not _TRAINER.get("time_limit")
        and not stopped_by
        and not run.stop_marker.exists()
    ):
        # A SIGTERM nobody here sent: Slurm preempting the job, which it requeues (PreemptMode
        # REQUEUE); the next supervisor resumes it. If Slurm ends the job instead, its state
        # (PREEMPTED, CANCELLED) is what refresh records.
        _requeued(run, state, "preempted by Slurm: it requeues the job, which resumes from its checkpoint")
        return returncode
    if _TRAINER.get("time_limit") and state.status != "succeeded" and not run.stop_marker.exists():
        if manifest.resources.requeue and _requeue(run, state):
            return returncode  # Slurm starts the job again; the next supervisor resumes it
        state.status, state.failure = (
            "failed",
            (
                f"the Slurm time limit came ({manifest.resources.time or 'the partition default'}): the trainer had "
                "SIGTERM and saved its checkpoint; resume_run continues it, or ask for more time / requeue=true"
            ),
        )
    elif stopped_by and state.status != "succeeded":
        state.status, state.failure = "failed", f"stopped by the watchdog: {stopped_by['detail']}"
    elif state.status == "failed" and (full or safefiles.disk_full(run.path)):
        state.failure = f"{full or safefiles.disk_full(run.path)} ({state.failure})"
    elif state.status == "stopped":  # a stop someone asked for: a sweep's pruner, a trial budget, a user
        request = run.stop_request()
        state.stopped_because = request.get("because")
        if request.get("outcome") == "pruned":
            state.status = "pruned"
    state.finished_at = time.time()
    _finish(run, manifest, state)
    return returncode


SLURM_ENV_PREFIXES = (
    "SLURM_",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
)
_TRAINER: dict = {}  # the trainer this supervisor started, for the time-limit signal's handler


def _device_env(manifest: Manifest, held: list[int]) -> dict[str, str]:
    """A GPU run sees the GPUs of its slots, unless its config names a device itself (cuda:1).
    More slots than GPUs (TRAINGUARD_GPU_SLOTS) share them: slot i is GPU i modulo their count."""
    device = str(manifest.config.get("device") or "")
    if manifest.resource != "gpu" or device.startswith("cuda:"):
        return {}
    return slots.device_env(sorted({i % max(1, len(manifest.gpus)) for i in held}), manifest.env)


def _time_limit_ahead(signum: int, frame: object) -> None:
    """Slurm's warning that the time limit is near (#SBATCH --signal=B:USR1): noted here; the
    supervisor's loop gives the trainer its SIGTERM (it saves its checkpoint), and the outcome
    then says why, or the job is requeued."""
    _TRAINER["time_limit"] = _TRAINER["term_pending"] = True


def _term_steps() -> None:
    """SIGTERM to the job's steps, the trainer's tasks, straight from Slurm: srun itself would
    take a SIGTERM as "kill the step now" and SIGKILL the tasks before they can checkpoint."""
    slurm.COMMANDS.run(["scancel", "--signal=TERM", os.environ.get("SLURM_JOB_ID", "")])


def _stop_trainer(run: RunDir, manifest: Manifest, state: RunState, proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the trainer (it checkpoints), SIGKILL what is left after `grace_s`."""
    if manifest.backend != "slurm":
        procs.RunProcesses(run.run_id, proc.pid, state.pid_started, str(run.path)).stop(grace_s)
        return
    _term_steps()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        # SIGKILL to srun: the step ends with it
        procs.RunProcesses(run.run_id, proc.pid, state.pid_started, str(run.path)).signal(signal.SIGKILL)


def _restart_argv(run: RunDir, manifest: Manifest) -> list[str]:
    """A requeued job (SLURM_RESTART_COUNT > 0) resumes from its latest checkpoint."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0 or not manifest.resume_checkpoint:
        return manifest.argv
    found = sorted(
        (p for p in run.checkpoints.glob(manifest.resume_checkpoint) if safefiles.is_regular(p)),
        key=lambda p: os.lstat(p).st_mtime,
    )
    return slurm.restart_argv(manifest.argv, manifest.resume_flag, found[-1] if found else None)


def _requeue(run: RunDir, state: RunState) -> bool:
    """Put the job back in Slurm's queue at its time limit (it resumes from the checkpoint; the
    server asks Slurm to start it at once rather than after its requeue delay). False if Slurm
    refused."""
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        requeued = slurm.COMMANDS.run(["scontrol", "requeue", job])
    except TrainguardError as exc:
        log.warning("scontrol requeue %s: %s", job, exc)
        return False
    if requeued.returncode != 0:
        log.warning("scontrol requeue %s refused: %s", job, requeued.stderr.strip())
        return False
    _requeued(run, state, "reached its Slurm time limit")
    return True


def _requeued(run: RunDir, state: RunState, why: str) -> None:
    """Record a job that goes back to Slurm's queue: queued, not ended."""
    state.status, state.failure, state.exit_code, state.signal = "queued", None, None, None
    state.requeues += 1
    state.pid = state.pgid = state.pid_started = None
    state.queued_at = time.time()
    with run.lock():
        run.write_state(state)
    try:
        manifest = run.read_manifest()
        scratchpad.append(
            Path(manifest.project_dir),
            manifest.agent,
            f"run {run.run_id} {why}: requeued ({state.requeues}), it resumes",
            kind="watchdog",
        )
    except (OSError, TrainguardError) as exc:
        log.warning("scratchpad not written: %s", exc)


def _take_slots(run: RunDir, manifest: Manifest, state: RunState) -> list[tuple[int, IO[bytes]]] | None:
    """Wait, queued in FIFO order, for the run's slots (one per process, all at once); None if
    cancelled meanwhile.

    Raises:
        TrainguardError: the run needs more slots than there are (it would wait forever).
    """
    root = run.path.parent
    resource, needed = manifest.resource, manifest.resources.nproc
    count = slots.slot_count(resource, len(manifest.gpus))
    if needed > count:
        raise TrainguardError(
            f"the run needs {needed} {resource} slots and there are {count}; launch it with "
            f"resources={{'nproc': {count}}} or fewer"
        )
    state.resource = resource
    now = time.time()
    held = (
        None
        if slots.queued_before(root, run.run_id, resource, now)
        else slots.try_acquire(root, resource, count, needed)
    )
    if held is not None:
        return held
    state.status, state.queued_at = "queued", now
    run.write_state(state)
    while True:
        if run.stop_marker.exists():
            return None
        time.sleep(QUEUE_POLL_S)
        if not slots.queued_before(root, run.run_id, resource, now):
            held = slots.try_acquire(root, resource, count, needed)
            if held is not None:
                return held


def _watch(run: RunDir, manifest: Manifest, state: RunState, proc: subprocess.Popen) -> tuple[dict | None, str | None]:
    """Poll the watchdog until the trainer exits; returns the event that stopped it, if one did,
    and whether the disk was seen full meanwhile."""
    config = manifest.watchdog
    dog = Watchdog(config, run.metrics, manifest.primary_metric)
    sample_gpu = bool(manifest.gpus) and (config.gpu_memory_gib or config.temperature_c)
    next_gpu, sampler = 0.0, None
    full = None
    while proc.poll() is None:
        time.sleep(POLL_S)
        if _TRAINER.pop("term_pending", False):  # Slurm's time-limit warning came
            try:
                _term_steps()
            except TrainguardError as exc:
                log.warning("could not signal the trainer at the time limit: %s", exc)
        full = full or safefiles.disk_full(run.path)
        events = dog.poll()
        if sample_gpu and time.monotonic() >= next_gpu:
            next_gpu = time.monotonic() + GPU_SAMPLE_S
            sampler = sampler or gpu.Sampler(run.path.parent)  # one backend for the whole run
            events += _gpu_events(dog, run.run_id, sampler)
        for event in events:
            state.events.append(event)
            _write_outcome(run, state)
            _scratchpad_event(run, manifest, event)
            if event["action"] == "stop" and proc.poll() is None:
                _stop_trainer(run, manifest, state, proc, manifest.watchdog.stop_grace_s)
                return event, full
    return None, full


def _gpu_events(dog: Watchdog, run_id: str, sampler: gpu.Sampler) -> list[dict]:
    """The run's GPU memory (its processes' share, else the device's) and temperature."""
    events = []
    for device in sampler.sample().devices:
        ours = [p.used_memory_bytes for p in device.processes if p.run_id == run_id and p.used_memory_bytes]
        if device.processes and not ours:
            continue  # another job's GPU
        used = sum(ours) if ours else device.memory_used_bytes
        events += dog.check_gpu(used, device.temperature_c, f"GPU {device.index}")
    return events


def _scratchpad_event(run: RunDir, manifest: Manifest, event: dict) -> None:
    what = "stopping the run" if event["action"] == "stop" else "warning"
    try:
        scratchpad.append(
            Path(manifest.project_dir),
            manifest.agent,
            f"run {run.run_id} watchdog {event['kind']} ({what}): {event['detail']}",
            kind="watchdog",
        )
    except (OSError, TrainguardError) as exc:
        log.warning("scratchpad not written: %s", exc)


def _finish(run: RunDir, manifest: Manifest, state: RunState) -> None:
    """Write the scratchpad's finish entry and the experiment's results row, then the terminal
    state with the curves' final headline: once a reader sees the run ended, everything about
    its end is on disk, and `list_runs` shows it without reading its logs again."""
    summary = None
    try:
        summary = _final_summary(run, manifest)
        state.headline = budget.clip(summary.headline, 240) or ""
        state.findings = [f.rule for f in _serious(summary)][:20]
    except (OSError, ValueError, TrainguardError) as exc:  # the outcome must be recorded even so
        log.warning("final headline not computed: %s", exc)
    try:
        _scratchpad_finish(run, manifest, state)
    except (OSError, TrainguardError) as exc:  # the outcome must be recorded even so
        state.failure = (state.failure or "") + f" (scratchpad not written: {exc})"
    try:
        ledger.record(run, manifest, state, summary)
    except (OSError, TrainguardError) as exc:  # the outcome must be recorded even so
        log.warning("results row not written: %s", exc)
        state.failure = ((state.failure or "") + f" (results.md row not written: {exc})").strip()
    _write_outcome(run, state)
    (run.path / ".reserve").unlink(missing_ok=True)


def _write_outcome(run: RunDir, state: RunState) -> None:
    """Write the state; on a full disk, give back the reserved space and write it again."""
    try:
        run.write_state(state)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        (run.path / ".reserve").unlink(missing_ok=True)
        if state.status != "running" and not (state.failure or "").startswith("disk full"):
            state.failure = f"{safefiles.disk_full(run.path) or 'disk full'} ({state.failure})"
        run.write_state(state)


def _final_summary(run: RunDir, manifest: Manifest) -> CurveSummary:
    # Imported only now, the trainer gone: numpy starts a BLAS thread (polars a pool), and while
    # the trainer runs the supervisor must stay one thread. Linux sends the leash's death signal
    # each time the thread the trainer is reparented to ends, so a second thread means a second
    # SIGTERM, which trainers (trainkit's StopFlag) take as "stop now, no checkpoint".
    from mcp_server.curves.summary import summarize_run_dir

    return summarize_run_dir(run.path, manifest)


def _serious(summary: CurveSummary) -> list:
    from mcp_server.curves.summary import serious_findings  # the trainer is gone (see _final_summary)

    return serious_findings(summary.findings)


def _scratchpad_finish(run: RunDir, manifest: Manifest, state: RunState) -> None:
    line = f"run {run.run_id} {state.status}"
    if state.failure:
        line += f" ({state.failure})"
    if state.started_at and state.finished_at:
        line += f" after {state.finished_at - state.started_at:.0f} s"
    line += f": {state.headline or 'no summary'}"
    scratchpad.append(Path(manifest.project_dir), manifest.agent, line, kind="finish")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mcp_server.supervisor RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    supervise(RunDir(Path(args[0]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
