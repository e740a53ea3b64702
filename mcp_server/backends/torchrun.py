"""The torchrun backend: one node, several processes, PyTorch's own launcher.

The run is local (a supervisor beside the server owns it), and its trainer starts as
`python -m torch.distributed.run --standalone --nproc-per-node N script ...` with the trainer's
own interpreter. The run takes N slots at once (slots.py), so a GPU run sees exactly N GPUs;
torchrun gives each rank RANK, LOCAL_RANK and WORLD_SIZE, forwards a stop's SIGTERM to every
rank, and ends the job when a rank dies, leaving each failed rank's error file under the run's
`torchrun/` folder for diagnose_run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_server import slots
from mcp_server.backends.local import LocalBackend
from mcp_server.backends.model import Resources
from mcp_server.checks import Check
from mcp_server.rundir import RunDir
from mcp_server.specs import TrainerSpec

LOG_DIR = "torchrun"


class TorchrunBackend(LocalBackend):
    name = "torchrun"

    def check(self, resources: Resources, spec: TrainerSpec, config: dict[str, Any], gpus: int) -> list[Check]:
        n = resources.nproc
        checks = []
        if not spec.command or spec.command[0] != "{python}":
            checks.append(
                Check(
                    name="backend",
                    verdict="fail",
                    detail=f"torchrun starts a Python script; trainer {spec.name}'s command starts with "
                    f"{spec.command[0] if spec.command else 'nothing'!r}.",
                    fix='Make the spec\'s command ["{python}", "path/to/train.py", ...], or use backend=\'local\'.',
                )
            )
        on_gpu = gpus > 0 and config.get("device") not in ("cpu", "mps")
        gpu_slots = slots.slot_count("gpu", gpus)
        if on_gpu and n > min(gpus, gpu_slots):
            checks.append(
                Check(
                    name="backend",
                    verdict="fail",
                    detail=f"{n} processes asked, one per GPU, but {gpus} GPUs are visible ({gpu_slots} GPU slots).",
                    fix=f"Pass resources={{'nproc': {min(gpus, gpu_slots)}}} or fewer, or train on the "
                    "CPU (device=cpu).",
                )
            )
        cpu_slots = slots.slot_count("cpu", 0)
        if not on_gpu and n > cpu_slots:
            checks.append(
                Check(
                    name="backend",
                    verdict="fail",
                    detail=f"{n} processes asked, one CPU slot each, but there are {cpu_slots} CPU slots.",
                    fix=f"Pass resources={{'nproc': {cpu_slots}}} or fewer (TRAINGUARD_CPU_SLOTS sets the slots).",
                )
            )
        batch = config.get(spec.memory.batch_param if spec.memory else "batch_size")
        if isinstance(batch, int) and not isinstance(batch, bool) and batch % n:
            checks.append(
                Check(
                    name="backend",
                    verdict="fail",
                    detail=f"batch_size {batch} is the global batch; it does not split over {n} ranks.",
                    fix=f"Use a multiple of {n} (e.g. {max(n, batch - batch % n)}).",
                )
            )
        if not checks:
            per_rank = f", {batch // n} samples per rank of the global batch {batch}" if isinstance(batch, int) else ""
            where = f"{n} GPUs" if on_gpu else f"{n} CPU slots (gloo)"
            checks.append(
                Check(name="backend", verdict="pass", detail=f"torchrun: {n} processes on {where}{per_rank}.")
            )
        return checks

    def trainer_argv(self, argv: list[str], resources: Resources, run: RunDir) -> list[str]:
        python, *rest = argv
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(resources.nproc),
            "--log-dir",
            str(run.path / LOG_DIR),
            *rest,
        ]

    def log_files(self, run: RunDir) -> dict[str, Path]:
        return {"torchrun": run.path / LOG_DIR}


TORCHRUN = TorchrunBackend()
