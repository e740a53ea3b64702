"""Experiments and the trainer specs they name, looked up project first, bundled second.

An experiment is a folder `experiments/NNN-slug/` with `experiment.toml` (which trainer,
which arguments) and `hypothesis.md` (seed 000: no experiment without a hypothesis). The
user's project (`CLAUDE_PROJECT_DIR`) is searched before the examples bundled with the
plugin, so a project's `001-*` shadows the bundled 001. `2`, `002` and `002-gauss` all name
the same experiment.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_server import budget, paths, safefiles
from mcp_server.backends.model import Placement
from mcp_server.errors import InvalidInput, NotFound, TrainguardError
from mcp_server.specs import ChanceLevels, Scalar, TrainerSpec, resolve_config
from mcp_server.watchdog import WatchdogConfig

EXPERIMENT_DIR_RE = re.compile(r"(\d{3})-([a-z0-9][a-z0-9-]*)")  # every name pattern is matched whole
REF_RE = re.compile(r"(\d{1,3})(?:-([a-z0-9][a-z0-9-]*))?")
TRAINER_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
MAX_FILE_BYTES = 1 * 2**20  # an experiment.toml, hypothesis or trainer spec is a few KB
PAGE_LIMIT = 100  # list_experiments: most rows a page may ask for


class ExperimentFile(BaseModel):
    """The schema of `experiment.toml`."""

    model_config = ConfigDict(extra="forbid")

    trainer: str
    title: str
    description: str = ""
    python: str | None = Field(
        default=None, description="Interpreter for the trainer, relative to the project (e.g. .venv/bin/python)."
    )
    args: dict[str, Scalar] = Field(default_factory=dict)
    chance: ChanceLevels = Field(
        default_factory=dict,
        description="chance level of an accuracy metric, by name (e.g. {'val/acc' = 0.25}): the trainer spec's, "
        "set or overridden per metric for this experiment (its data has that many classes)",
    )
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    run: Placement = Field(default_factory=Placement, description="where it runs: backend and resources")


class Experiment(BaseModel):
    """A resolved experiment: where it was found, its trainer and its validated arguments."""

    id: str
    number: int
    source: Literal["project", "bundled"]
    dir: Path
    title: str
    description: str
    trainer: str
    python: str | None
    args: dict[str, Scalar]
    hypothesis: str
    chance: dict[str, float] = Field(default_factory=dict)  # experiment.toml's; the launch lays it over the spec's
    watchdog: WatchdogConfig
    placement: Placement = Field(default_factory=Placement)


def _experiment_roots(project: Path) -> list[tuple[Literal["project", "bundled"], Path]]:
    roots: list[tuple[Literal["project", "bundled"], Path]] = [("project", project / "experiments")]
    if roots[0][1].resolve() != paths.BUNDLED_EXPERIMENTS.resolve():
        roots.append(("bundled", paths.BUNDLED_EXPERIMENTS))
    return roots


def _experiment_dirs(project: Path) -> list[tuple[Literal["project", "bundled"], Path]]:
    """Every experiment folder: the project's first, by number, then the bundled ones it does not
    shadow (a project's 001 hides the bundled 001)."""
    found: dict[int, tuple[Literal["project", "bundled"], Path]] = {}
    for source, root in _experiment_roots(project):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            m = EXPERIMENT_DIR_RE.fullmatch(child.name)
            if m and child.is_dir() and int(m.group(1)) not in found:
                found[int(m.group(1))] = (source, child)
    return sorted(found.values(), key=lambda sf: (sf[0] != "project", sf[1].name))


def find_experiment_dir(ref: str, project: Path) -> tuple[Literal["project", "bundled"], Path]:
    """Resolve `2`, `002` or `002-slug` to one experiment folder.

    Raises:
        InvalidInput: if `ref` is not of that shape.
        NotFound: if no experiment has that number (the message lists the ones there are).
    """
    ref = str(ref).strip()
    m = REF_RE.fullmatch(ref)
    if not m:
        raise InvalidInput(f"experiment {ref!r} is not a number: pass N, NNN or NNN-slug, e.g. '1' or '001'.")
    number, slug = int(m.group(1)), m.group(2)
    for source, folder in _experiment_dirs(project):
        if int(folder.name[:3]) == number:
            if slug and folder.name[4:] != slug:
                raise NotFound(f"experiment {number:03d} is {folder.name!r}, not {ref!r}; pass {number}.")
            return source, folder
    raise NotFound(f"no experiment {ref!r}; there are: {_available(project)}. Call list_experiments to see them.")


def _available(project: Path) -> str:
    names = [folder.name for _, folder in _experiment_dirs(project)]
    return ", ".join(names) if names else "none"


def load_experiment(ref: str, project: Path | None = None) -> Experiment:
    """Find and validate an experiment, including its arguments against its trainer.

    Raises:
        NotFound / InvalidInput: with the file and the fix in the message.
    """
    project = project or paths.project_root()
    source, folder = find_experiment_dir(ref, project)
    toml_path = folder / "experiment.toml"
    if not toml_path.exists():
        raise NotFound(f"{folder} has no experiment.toml; create it with at least `trainer` and `title`.")
    raw = read_toml(toml_path)
    try:
        spec_file = ExperimentFile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{toml_path} is invalid: {_first_errors(exc)}.") from None
    hypothesis_path = folder / "hypothesis.md"
    hypothesis = _read_text(hypothesis_path).strip() if hypothesis_path.exists() else ""
    if not hypothesis:
        raise NotFound(
            f"{folder.name} has no hypothesis: write {hypothesis_path} (what you expect this run to show "
            "and why) before training it."
        )
    trainer = load_trainer(spec_file.trainer, project)
    resolve_config(trainer, [(f"{toml_path}", spec_file.args)], project)
    return Experiment(
        id=folder.name,
        number=int(folder.name[:3]),
        source=source,
        dir=folder,
        title=spec_file.title,
        description=spec_file.description,
        trainer=spec_file.trainer,
        python=spec_file.python,
        args=spec_file.args,
        hypothesis=hypothesis,
        chance=spec_file.chance,
        watchdog=spec_file.watchdog,
        placement=spec_file.run,
    )


class ExperimentInfo(BaseModel):
    """One experiment as `list_experiments` shows it; a broken one carries its error and fix instead."""

    id: str
    title: str
    trainer: str | None
    source: str | None
    description: str
    args: dict[str, Scalar]
    error: str | None = None


def list_experiments(project: Path | None = None) -> list[ExperimentInfo]:
    """Every experiment, whole (nothing cut); a broken one is listed with its error instead of hiding it."""
    project = project or paths.project_root()
    return [_info(folder, project) for _, folder in _experiment_dirs(project)]


class ExperimentPage(BaseModel):
    experiments: list[ExperimentInfo]
    total: int
    offset: int
    next_offset: int | None  # pass it as offset for the next page; None on the last one
    project_dir: str


def _info(folder: Path, project: Path) -> ExperimentInfo:
    try:
        exp = load_experiment(folder.name, project)
    except TrainguardError as exc:  # one broken experiment never hides the others
        return ExperimentInfo(
            id=folder.name, title="(invalid)", trainer=None, source=None, description="", args={}, error=str(exc)
        )
    return ExperimentInfo(
        id=exp.id, title=exp.title, trainer=exp.trainer, source=exp.source, description=exp.description, args=exp.args
    )


def _clipped(info: ExperimentInfo) -> ExperimentInfo:
    """A row within the answer budget: long texts cut, the first 24 arguments."""
    args = {k: budget.clip(v, 80) if isinstance(v, str) else v for k, v in list(info.args.items())[:24]}
    return info.model_copy(
        update={
            "title": budget.clip(info.title, 120) or "",
            "args": args,
            "description": budget.clip(info.description, 200) or "",
            "error": budget.clip(info.error, 500),
        }
    )


def experiment_page(project: Path | None = None, limit: int = 50, offset: int = 0) -> ExperimentPage:
    """A page of `list_experiments`, within the answer budget: descriptions and long values cut,
    rows until the budget is spent (`next_offset` says where the next page starts)."""
    project = project or paths.project_root()
    folders = [folder for _, folder in _experiment_dirs(project)]
    rows, next_offset = budget.page(folders, offset, limit, lambda folder: _clipped(_info(folder, project)))
    return ExperimentPage(
        experiments=rows, total=len(folders), offset=offset, next_offset=next_offset, project_dir=str(project)
    )


def load_trainer(name: str, project: Path | None = None) -> TrainerSpec:
    """Load a trainer spec: `<project>/experiments/trainers/<name>.toml`, else the bundled one.

    Raises:
        NotFound: if no spec has that name (the message lists the known ones).
        InvalidInput: if the spec file fails validation.
    """
    project = project or paths.project_root()
    if not isinstance(name, str) or not TRAINER_NAME_RE.fullmatch(name):
        raise InvalidInput(f"trainer name {name!r} must be lower_snake_case, e.g. 'trm_nav'.")
    for folder in (project / "experiments" / "trainers", paths.BUNDLED_TRAINERS):
        path = folder / f"{name}.toml"
        if path.exists():
            try:
                return TrainerSpec.model_validate({**read_toml(path), "source": path.resolve()})
            except ValidationError as exc:
                raise InvalidInput(f"trainer spec {path} is invalid: {_first_errors(exc)}.") from None
    raise NotFound(f"unknown trainer {name!r}; known trainers: {', '.join(known_trainers(project)) or 'none'}.")


def known_trainers(project: Path) -> list[str]:
    """Names of every trainer spec, the project's and the bundled ones."""
    names = set()
    for folder in (project / "experiments" / "trainers", paths.BUNDLED_TRAINERS):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml") if TRAINER_NAME_RE.fullmatch(p.stem))
    return sorted(names)


def _read_text(path: Path) -> str:
    """A project file as text: a regular file (never a FIFO), UTF-8, of a sane size.

    Raises:
        InvalidInput: naming the file and what is wrong with it.
    """
    text = safefiles.read_text(path, what="file")
    if len(text) > MAX_FILE_BYTES:
        raise InvalidInput(f"{path} is {len(text):,} characters; an experiment file is a few KB. Shorten it.")
    return text


def read_toml(path: Path) -> dict[str, Any]:
    """A project TOML file (a regular file of a sane size), parsed.

    Raises:
        InvalidInput: naming the file and what is wrong with it.
    """
    text = _read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path} is not valid TOML: {exc}.") from None
    except RecursionError:
        raise InvalidInput(f"{path} nests tables or arrays too deeply to read; flatten it.") from None


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
