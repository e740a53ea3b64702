"""Where a run runs: the backend's name and the resources it asks for.

The same fields come from an experiment's `[run]` table and from `launch_run(backend=...,
resources={...})`, which overrides them; the manifest records what a run got. Slurm's fields
are validated whole here, so no value can carry a second `#SBATCH` line or anything else.

    [run]
    backend = "torchrun"
    resources = { nproc = 2 }

    [run]
    backend = "slurm"
    resources = { partition = "gpu", account = "lab", time = "4:00:00", gpus = 4, nproc = 4, requeue = true }
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BackendName = Literal["local", "torchrun", "slurm"]
MAX_PROCESSES = 64

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")  # partition, account, qos
TIME_RE = re.compile(r"\d{1,6}|\d{1,4}:\d{2}(:\d{2})?|\d{1,3}-\d{1,2}(:\d{2}(:\d{2})?)?")  # Slurm's --time forms
MEM_RE = re.compile(r"\d{1,9}[KMGT]?")
CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.&|,!*-]{1,128}")
VALUE_RE = re.compile(r"[A-Za-z0-9_.,:@=+/%-]{1,256}")
# Further #SBATCH options a user may set (`extra`), each value matched whole by VALUE_RE.
SBATCH_EXTRA = frozenset(
    {
        "mail-type",
        "mail-user",
        "exclude",
        "nodelist",
        "reservation",
        "comment",
        "licenses",
        "begin",
        "deadline",
        "gres-flags",
        "nice",
        "dependency",
    }
)


class Resources(BaseModel):
    """What a run asks for beyond its trainer's arguments."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(
        default=1,
        ge=1,
        le=MAX_PROCESSES,
        description="processes per node (torchrun's ranks); each takes one slot: one GPU, or a CPU slot",
    )
    # Slurm (backend="slurm"); ignored elsewhere.
    partition: str | None = Field(default=None, description="Slurm partition")
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(default=None, description="Slurm time limit: minutes, H:MM:SS or D-HH:MM:SS")
    gpus: int | None = Field(default=None, ge=0, le=MAX_PROCESSES, description="GPUs per node")
    cpus_per_task: int | None = Field(default=None, ge=1, le=1024)
    mem: str | None = Field(default=None, description="memory per node, e.g. 32G")
    constraint: str | None = None
    nodes: int = Field(default=1, ge=1, le=1024)
    requeue: bool = Field(default=False, description="requeue at the time limit or on preemption, then resume")
    signal_s: int = Field(default=60, ge=10, le=3600, description="SIGTERM this long before the time limit")
    extra: dict[str, str] = Field(default_factory=dict, description=f"further #SBATCH options: {sorted(SBATCH_EXTRA)}")

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm name (letters, digits, _ . + -, at most 64)")
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and not TIME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm time (minutes, MM:SS, H:MM:SS, D-HH or D-HH:MM:SS)")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not MEM_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm memory size (a number with K, M, G or T)")
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        if value is not None and not CONSTRAINT_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Slurm constraint (features joined by & | ,)")
        return value

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if key not in SBATCH_EXTRA:
                raise ValueError(f"#SBATCH --{key} is not allowed; the options allowed are {sorted(SBATCH_EXTRA)}")
            if not VALUE_RE.fullmatch(item):
                raise ValueError(f"--{key}={item!r}: a value is letters, digits and _ . , : @ = + / % - only")
        return value


class Placement(BaseModel):
    """A run's backend and resources: an experiment's `[run]` table, or launch_run's arguments."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendName = "local"
    resources: Resources = Field(default_factory=Resources)
