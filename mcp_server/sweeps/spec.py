"""A sweep as the user writes it (`launch_sweep`'s arguments, or `sweep.toml` beside an
experiment), checked against the experiment's trainer before any trial starts.

    # experiments/001-trm-fast-dev/sweep.toml
    strategy = "grid"                 # grid | random | tpe
    parallel = 1                      # trials at once (default: one per GPU, one on a CPU)
    trial_budget_s = 300              # seconds per trial from its trainer's start, at most
    prune = "median"                  # none | median | asha, or a [prune] table
    [overrides]                       # the same for every trial
    epochs = 8
    [space]
    dim = [64, 128, 256]              # a list: grid values, or choices for random / tpe
    lr = { low = 1e-4, high = 1e-2, log = true }   # a range: random / tpe only

Every value is checked as a launch would check it (type, range, choices of the trainer
spec), so a typo fails here, not 27 trials later.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mcp_server import registry
from mcp_server.errors import InvalidInput, NotFound
from mcp_server.specs import Scalar, TrainerSpec, coerce_value, resolve_config

SWEEP_FILE = "sweep.toml"
Strategy = Literal["grid", "random", "tpe"]
PruneKind = Literal["none", "median", "asha"]
MAX_TRIALS = 500
MAX_GRID = 1000
MAX_PARALLEL = 64
MAX_DIMENSIONS = 12
MAX_CHOICES = 64
MAX_BUDGET_S = 7 * 24 * 3600.0
DEFAULT_RANDOM_TRIALS = 20
NOT_SWEPT = ("resume",)  # a checkpoint path: one per run, never a hyperparameter


class Range(BaseModel):
    """A numeric range for random or model-based search: `{low, high, log, step}`."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}, both finite")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        return self


class Choices(BaseModel):
    """Named choices: `{choices = ["relu", "gelu"]}` (the same as a plain list)."""

    model_config = ConfigDict(extra="forbid")

    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)


Dimension = list[Scalar] | Range | Choices


class Pruning(BaseModel):
    """How losing trials are stopped early. median: a trial whose best so far is below the median
    of completed trials at the same epoch; asha: successive halving (only the best
    1/reduction_factor of the trials at each rung go on)."""

    model_config = ConfigDict(extra="forbid")

    kind: PruneKind = "median"
    startup_trials: int = Field(default=2, ge=0, le=100, description="median: completed trials before any pruning")
    warmup_epochs: int = Field(
        default=1, ge=0, le=100_000, description="reports (epochs) a trial makes before it may be pruned"
    )
    reduction_factor: int = Field(default=3, ge=2, le=10, description="asha: 1 in this many trials go on at a rung")


class SweepFile(BaseModel):
    """The schema of `sweep.toml` and of `launch_sweep`'s arguments; every key optional but
    `space` (which `launch_sweep` may pass instead)."""

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Dimension] = Field(default_factory=dict)
    strategy: Strategy | None = None  # default: grid when every dimension is a list, else tpe
    max_trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    parallel: int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    metric: str | None = None  # default: the trainer's primary metric
    direction: Literal["min", "max"] | None = None  # default: the metric's mode in the trainer spec
    prune: PruneKind | Pruning = "median"
    trial_budget_s: float | None = Field(default=None, gt=0, le=MAX_BUDGET_S)
    overrides: dict[str, Scalar] = Field(default_factory=dict)
    acknowledge: list[str] = Field(default_factory=list)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class SweepSpec(BaseModel):
    """A sweep resolved against its experiment: what its driver runs (`sweep.json`)."""

    sweep_id: str
    experiment: str
    project_dir: str
    created_at: str
    space: dict[str, Dimension]
    strategy: Strategy
    max_trials: int
    parallel: int | None  # None: one per GPU slot of the first trial's resource, one on a CPU
    metric: str
    direction: Literal["min", "max"]
    prune: Pruning
    trial_budget_s: float | None
    overrides: dict[str, Scalar]
    acknowledge: list[str]
    seed: int
    grid: list[dict[str, Scalar]] = Field(default_factory=list)  # grid: every point, in nested-loop order
    agent: str = "training-runner"
    note: str = ""


def values_of(dimension: Dimension) -> list[Scalar] | None:
    """A list or choices dimension's values; None for a range."""
    if isinstance(dimension, Choices):
        return list(dimension.choices)
    if isinstance(dimension, list):
        return list(dimension)
    return None


def read_file(experiment_dir: Path) -> dict[str, Any]:
    """The experiment's `sweep.toml`, as a dict ({} when it has none)."""
    path = experiment_dir / SWEEP_FILE
    if not path.exists() and not path.is_symlink():
        return {}
    return registry.read_toml(path)


def parse(raw: dict[str, Any], where: str) -> SweepFile:
    """Validate a sweep's keys, with the first errors and the fix in the message."""
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A dimension is a union (list | range | choices): pydantic reports every branch; our own
        # checks (value errors) say what is wrong with the one meant, so they go first.
        errors = [e for e in errors if e["type"] == "value_error"] or errors
        parts = []
        for err in errors[:3]:
            loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)) or "(top level)"
            part = f"{loc}: {err['msg'].removeprefix('Value error, ')}"
            if part not in parts:
                parts.append(part)
        raise InvalidInput(
            f"{where}: " + "; ".join(parts) + ". A dimension is a list ([64, 128]), {low, high, log} or "
            "{choices = [...]}; strategy is grid, random or tpe; prune is none, median or asha."
        ) from None


def _check_dimension(name: str, dimension: Dimension, trainer: TrainerSpec, project: Path) -> Dimension:
    """A dimension whose every value the trainer accepts, in its type."""
    if name not in trainer.params:
        raise InvalidInput(
            f"space names {name!r}, which trainer {trainer.name!r} does not take; its parameters: "
            + ", ".join(sorted(trainer.params))
        )
    if name in NOT_SWEPT:
        raise InvalidInput(f"space names {name!r}: a checkpoint is not a hyperparameter; pass it to launch_run.")
    param = trainer.params[name]
    listed = values_of(dimension)
    if listed is not None:
        try:
            typed = [coerce_value(name, param, v, project) for v in listed]
        except InvalidInput as exc:
            raise InvalidInput(f"space {name!r}: {exc}") from None
        if len(set(map(repr, typed))) != len(typed):
            raise InvalidInput(f"space {name!r} lists a value twice: {listed}; list each once.")
        return Choices(choices=typed) if isinstance(dimension, Choices) else typed
    assert isinstance(dimension, Range)
    if param.type not in ("int", "float"):
        raise InvalidInput(
            f"space {name!r} is a range, but {name!r} takes {param.type} values; list them: {name} = [...]."
        )
    for bound in (dimension.low, dimension.high):
        try:
            coerce_value(name, param, int(bound) if param.type == "int" else bound, project)
        except InvalidInput as exc:
            raise InvalidInput(f"space {name!r}: a bound is out of range: {exc}") from None
    if param.type == "int" and not (dimension.low.is_integer() and dimension.high.is_integer()):
        raise InvalidInput(f"space {name!r} takes integers; give low and high as integers.")
    return dimension


def resolve(
    experiment: str, raw: dict[str, Any], project: Path, *, sweep_id: str, created_at: str, agent: str, note: str
) -> SweepSpec:
    """The sweep of `experiment` that `raw` describes (its sweep.toml's keys, with the tool's
    arguments laid over them: `space` replaces the file's, `overrides` and `acknowledge` add to
    the file's, a fixed value that is now swept is dropped), checked against the trainer.

    Raises:
        InvalidInput / NotFound: what is wrong, and what to pass instead.
    """
    exp = registry.load_experiment(experiment, project)
    trainer = registry.load_trainer(exp.trainer, project)
    from_file = read_file(exp.dir)
    given = {k: v for k, v in raw.items() if v is not None}
    merged = {**from_file, **given}
    if isinstance(from_file.get("overrides"), dict) and isinstance(given.get("overrides"), dict):
        # the file's fixed values stay unless given again, or swept now
        space_keys = set(merged.get("space") or {})
        kept = {k: v for k, v in from_file["overrides"].items() if k not in space_keys}
        merged["overrides"] = kept | given["overrides"]
    elif isinstance(from_file.get("overrides"), dict) and "space" in given and isinstance(given["space"], dict):
        merged["overrides"] = {k: v for k, v in from_file["overrides"].items() if k not in given["space"]}
    if isinstance(from_file.get("acknowledge"), list) and isinstance(given.get("acknowledge"), list):
        merged["acknowledge"] = [*from_file["acknowledge"], *given["acknowledge"]]
    if not merged.get("space"):
        raise NotFound(
            f"experiment {exp.id} has no {SWEEP_FILE} and no space was given: pass space, e.g. "
            "{'dim': [64, 128], 'lr': {'low': 1e-4, 'high': 1e-2, 'log': true}}, or write "
            f"{exp.dir / SWEEP_FILE} with a [space] table."
        )
    sweep = parse(
        merged, f"the sweep of {exp.id}" + (f" ({exp.dir / SWEEP_FILE} and the arguments)" if from_file else "")
    )
    if len(sweep.space) > MAX_DIMENSIONS:
        raise InvalidInput(f"space has {len(sweep.space)} dimensions; sweep at most {MAX_DIMENSIONS} at once.")
    space = {name: _check_dimension(name, dim, trainer, project) for name, dim in sweep.space.items()}
    both = sorted(set(space) & set(sweep.overrides))
    if both:
        raise InvalidInput(f"{both} are both swept (space) and fixed (overrides); keep each in one of them.")
    resolve_config(trainer, [(f"experiment {exp.id}", exp.args), ("the sweep's overrides", sweep.overrides)], project)
    overrides = {k: coerce_value(k, trainer.params[k], v, project) for k, v in sweep.overrides.items()}
    ranges = [name for name, dim in space.items() if values_of(dim) is None]
    strategy = sweep.strategy or ("tpe" if ranges else "grid")
    grid: list[dict[str, Scalar]] = []
    if strategy == "grid":
        if ranges:
            raise InvalidInput(
                f"a grid needs lists, and {ranges} are ranges; list their values (e.g. lr = [1e-3, 5e-4]), "
                "or use strategy random or tpe."
            )
        size = math.prod(len(values_of(dim) or []) for dim in space.values())
        if size > MAX_GRID:
            raise InvalidInput(f"the grid has {size} points; at most {MAX_GRID}. Shorten the lists, or use tpe.")
        grid = [dict(zip(space, combo, strict=True)) for combo in itertools.product(*map(values_of, space.values()))]
        max_trials = min(sweep.max_trials or len(grid), len(grid))
    else:
        max_trials = sweep.max_trials or DEFAULT_RANDOM_TRIALS
    known = {rule.id for rule in trainer.danger}
    unknown = sorted(set(sweep.acknowledge) - known)
    if unknown:
        raise InvalidInput(
            f"acknowledge names unknown danger rules {unknown}; {trainer.name}'s rules are {sorted(known) or 'none'}."
        )
    metric = sweep.metric or trainer.primary_metric
    direction = sweep.direction or (trainer.primary_mode if metric == trainer.primary_metric else None)
    if direction is None:
        raise InvalidInput(
            f"metric {metric!r} is not the trainer's primary metric ({trainer.primary_metric}); "
            "say whether higher is better: direction 'max' or 'min'."
        )
    prune = sweep.prune if isinstance(sweep.prune, Pruning) else Pruning(kind=sweep.prune)
    return SweepSpec(
        sweep_id=sweep_id,
        experiment=exp.id,
        project_dir=str(project),
        created_at=created_at,
        space=space,
        strategy=strategy,
        max_trials=max_trials,
        parallel=sweep.parallel,
        metric=metric,
        direction=direction,
        prune=prune,
        trial_budget_s=sweep.trial_budget_s,
        overrides=overrides,
        acknowledge=sorted(set(sweep.acknowledge)),
        seed=sweep.seed,
        grid=grid[:max_trials],
        agent=agent,
        note=note,
    )
