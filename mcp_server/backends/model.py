"""Where a run runs: the backend's name and the resources it asks for.

The same fields come from an experiment's `[run]` table and from `launch_run(backend=...,
resources={...})`, which overrides them; the manifest records what a run got.

    [run]
    backend = "torchrun"
    resources = { nproc = 2 }
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BackendName = Literal["local", "torchrun"]
MAX_PROCESSES = 64


class Resources(BaseModel):
    """What a run asks for beyond its trainer's arguments."""

    model_config = ConfigDict(extra="forbid")

    nproc: int = Field(default=1, ge=1, le=MAX_PROCESSES,
                       description="processes on the node (torchrun); each takes one slot: one GPU, or one CPU slot")


class Placement(BaseModel):
    """A run's backend and resources: an experiment's `[run]` table, or launch_run's arguments."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendName = "local"
    resources: Resources = Field(default_factory=Resources)
