"""Run backends: where a run's processes run, behind one protocol.

Every backend keeps the same run folder, run id, metrics stream and manifest; what differs is
how the run is started, how its state is learnt, how it is stopped and where its extra logs
are. `local` starts a supervisor beside the server; `torchrun` is local with the trainer under
`python -m torch.distributed.run` on N slots; `slurm` submits the same supervisor with `sbatch`
and reads Slurm's own states.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mcp_server.backends.model import BackendName, Placement, Resources
from mcp_server.errors import InvalidInput

if TYPE_CHECKING:
    from mcp_server.checks import Check
    from mcp_server.rundir import RunDir, RunState
    from mcp_server.specs import TrainerSpec

__all__ = ["Backend", "BackendName", "Placement", "Resources", "get"]


class Backend(Protocol):
    name: str

    def check(self, resources: Resources, spec: TrainerSpec, config: dict[str, Any], gpus: int) -> list[Check]:
        """Pre-flight's checks of this backend for a run asking `resources` (`gpus`: visible GPUs)."""
        ...

    def trainer_argv(self, argv: list[str], resources: Resources, run: RunDir) -> list[str]:
        """The command the run's supervisor starts (the manifest's argv), from the trainer's own."""
        ...

    def start(self, run: RunDir) -> RunState:
        """Start the run whose folder, state and manifest are written; its state once it is
        queued or running.

        Raises:
            TrainguardError / OSError: it could not start (the caller removes the folder).
        """
        ...

    def refresh(self, run: RunDir, state: RunState) -> RunState:
        """The state, corrected when the backend knows better (a dead supervisor, a job's end)."""
        ...

    def stop(self, run: RunDir, state: RunState, grace_s: float) -> str:
        """Stop the run's processes (SIGTERM, then SIGKILL after `grace_s`); how it went:
        gone, terminated or killed."""
        ...

    def log_files(self, run: RunDir) -> dict[str, Path]:
        """Logs beyond stdout, stderr, metrics and the supervisor's, by name."""
        ...

    def processes_left(self, run: RunDir, state: RunState) -> int:
        """How many of the run's processes still live (after a stop)."""
        ...


def get(name: str) -> Backend:
    """The backend called `name`.

    Raises:
        InvalidInput: for an unknown name.
    """
    from mcp_server.backends import local, slurm, torchrun

    known: dict[str, Backend] = {"local": local.LOCAL, "torchrun": torchrun.TORCHRUN, "slurm": slurm.SLURM}
    if name not in known:
        raise InvalidInput(f"backend {name!r} is not one of {sorted(known)}.")
    return known[name]
