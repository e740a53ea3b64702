"""The one way to ask another interpreter a question: run a probe file, read its JSON answer.

The server never imports torch (or amdsmi, or PIL), so what only the trainer's interpreter
can know (its torch build, whether a sample decodes, a step's peak memory, what ROCm reports)
is asked of a subprocess: `python PROBE ARGS...`, an argv list, stdin closed, its own
process group (killed whole at the timeout), output to anonymous files of which only the tail
is read, and the last stdout line parsed as one JSON object. Whatever else the probe prints
(a library's import noise) stays in its own output, never on the MCP wire.

The probes are files in `mcp_server/probes/` (ruff lints them; the wheel ships them). They run
under the trainer's interpreter, which may not have `mcp_server` importable, so they import
only the standard library and what they probe.

Answers are cached, in one cache for every caller, while the key is unchanged: the
interpreter and its modification time, the probe file and its modification time, the
arguments, the working directory, the environment variables that change what a probe sees
(`ENV_THAT_MATTERS`) and whatever the caller adds (`key`). An answer carrying an `error` key
is never cached: the fault may be fixed without touching anything in the key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from mcp_server.errors import TrainguardError

PROBES = Path(__file__).resolve().parent / "probes"
STDOUT_TAIL_BYTES = 256 * 1024  # the answer is the last line; a memory trace's is a few kB
STDERR_TAIL_BYTES = 4096  # enough for the end of a traceback
STDERR_SHOWN_CHARS = 500
# Variables that change what a probe finds: which interpreter and libraries load, which devices it sees.
ENV_THAT_MATTERS = frozenset({"PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"})
ENV_PREFIXES_THAT_MATTER = ("CUDA_", "HIP_", "ROCR_", "HSA_", "ROCM_")

_cache: dict[tuple, tuple[float, ProbeAnswer]] = {}


@dataclass(frozen=True)
class ProbeAnswer:
    """A probe's JSON answer, with its exit status and the end of its stderr (some probes
    answer an error in JSON and exit non-zero; the caller shows both)."""

    data: dict[str, Any]
    returncode: int
    stderr_tail: str


class ProbeError(TrainguardError):
    """The probe gave no answer: it could not start, ran past its timeout, crashed, or printed no JSON.

    `reason` names which, for callers that word their own fix.
    """

    def __init__(self, message: str, reason: Literal["start", "timeout", "crash", "no_json"]):
        super().__init__(message)
        self.reason = reason


def probe_path(name: str) -> Path:
    """The bundled probe `name` (e.g. "torch_probe"), in a checkout or an installed wheel."""
    return PROBES / f"{name}.py"


def run(
    python: str,
    probe: str | Path,
    args: Sequence[str] = (),
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ttl_s: float | None = None,
    key: tuple = (),
    unkeyed_args: Sequence[str] = (),
) -> ProbeAnswer:
    """Run `probe` (a bundled probe's name, or a file) with `python` and return its answer.

    Args:
        python: the interpreter (the trainer's, or the server's own for a server-side library).
        probe: a name in `mcp_server/probes/` or the path of a probe file elsewhere.
        args: its arguments.
        timeout_s: the probe and everything it started are killed past this.
        env: its whole environment (None: ours).
        cwd: its working directory (None: ours).
        ttl_s: keep the answer this long (None: never cached).
        key: more of the cache key, for what the probe reads that the rest of the key misses.
        unkeyed_args: arguments put before `args` that do not change the answer and stay out of
            the key (a resource limit computed from the free memory of the moment).

    Raises:
        ProbeError: no JSON answer; the message says why, with the end of the probe's stderr.
    """
    script = probe if isinstance(probe, Path) else probe_path(probe)
    argv = [python, str(script), *unkeyed_args, *args]
    cache_key = None
    if ttl_s is not None:
        cache_key = _key([python, str(script), *args], script, env, cwd, key)
        cached = _cache.get(cache_key) if cache_key else None
        if cached and time.monotonic() - cached[0] < ttl_s:
            return cached[1]
    answer = _run(argv, script.stem, timeout_s, env, cwd)
    if cache_key and "error" not in answer.data:
        _cache[cache_key] = (time.monotonic(), answer)
    return answer


def clear_cache() -> None:
    """Forget every cached answer (tests; after installing packages into an interpreter)."""
    _cache.clear()


def _key(argv: list[str], script: Path, env: Mapping[str, str] | None, cwd: Path | None, extra: tuple) -> tuple | None:
    """The cache key, or None when the interpreter or the probe cannot be stat'ed (then the run says why)."""
    try:
        stamps = (os.stat(argv[0]).st_mtime_ns, script.stat().st_mtime_ns)  # follows a venv's python link
    except OSError:
        return None
    seen = os.environ if env is None else env
    matters = tuple(
        sorted((k, v) for k, v in seen.items() if k in ENV_THAT_MATTERS or k.startswith(ENV_PREFIXES_THAT_MATTER))
    )
    return (tuple(argv), stamps, str(cwd) if cwd else None, matters, extra)


def _run(argv: list[str], name: str, timeout_s: float, env: Mapping[str, str] | None, cwd: Path | None) -> ProbeAnswer:
    python = argv[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProbeError(
                f"cannot run {python}: {exc.strerror or exc} (it must be an existing Python interpreter)", "start"
            ) from None
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stderr = _tail(err, STDERR_TAIL_BYTES)
            raise ProbeError(
                f"the {name} probe did not answer within {timeout_s:g} s under {python}"
                f"{_said(stderr)}; run it by hand ({' '.join(argv[:2])} ...) to see where it "
                "hangs, or fix what makes the interpreter slow to start.",
                "timeout",
            ) from None
        stdout, stderr = _tail(out, STDOUT_TAIL_BYTES), _tail(err, STDERR_TAIL_BYTES)
    data = _last_json(stdout)
    if data is not None:
        return ProbeAnswer(data, returncode, stderr)
    if returncode != 0:
        raise ProbeError(f"the {name} probe exited {_status(returncode)} under {python}{_said(stderr)}", "crash")
    raise ProbeError(
        f"the {name} probe printed no JSON answer under {python} (its last line must be one JSON "
        f"object){_said(stderr)}",
        "no_json",
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a probe that is still running, and all it started: its pid is not yet reaped, so the
    group id cannot name anyone else's processes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # the group is gone already
        pass
    proc.wait()


def _tail(fh: IO[bytes], limit: int) -> str:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - limit))
    return fh.read().decode(errors="replace")


def _last_json(stdout: str) -> dict[str, Any] | None:
    lines = stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _said(stderr: str) -> str:
    text = " ".join(stderr.strip().splitlines()[-3:])[-STDERR_SHOWN_CHARS:]
    return f": {text}" if text else " (nothing on stderr)"


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"on signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"on signal {-returncode}"
    return str(returncode)
