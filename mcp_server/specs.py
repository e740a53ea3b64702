"""Trainer specs: how a training script is started and which parameters it takes.

A spec is a TOML file, the same format for the bundled trainers (`trainers/<name>.toml`)
and for a user's own scripts (`experiments/trainers/<name>.toml` in their project). It
names the command as an argv template, and for each parameter its flag, type, range and
default. Every value that reaches a command line is checked against its spec here, so a
tool argument can never smuggle in a flag, a second value or a path outside the project.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from mcp_server.curves.remedies import REMEDY_MAX_CHARS, RULE_IDS
from mcp_server.errors import InvalidInput
from mcp_server.rules import DangerRule, KnownGood

Scalar = bool | int | float | str
FLAG_RE = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_-]*$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# What `expand` fills in a command template; `{value}` (the path) only in a `prepare` template.
PLACEHOLDERS = ("{python}", "{trainer_dir}", "{project_dir}")
PREPARE_PLACEHOLDERS = (*PLACEHOLDERS, "{value}")
PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")  # what reads as one: `{name}`
MAX_STR_LEN = 1024
# A flag in a remedy's text: `--name` not inside a word or a number (`1e-4` and `train-loss` are not flags).
REMEDY_FLAG_RE = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*")
# Chance level of accuracy metrics, by name: a trainer spec's, and an experiment's on top of it.
ChanceLevels = dict[str, Annotated[float, Field(ge=0.0, le=1.0)]]


def check_placeholders(template: list[str], allowed: tuple[str, ...], where: str) -> list[str]:
    """`template` unchanged if every `{name}` in it is one `expand` fills: an unknown one (a typo
    such as `{project}` or `{trainerdir}`) would otherwise reach the command line as it is.

    Raises:
        ValueError: naming the placeholder and the allowed ones (pydantic reports it as a spec error).
    """
    for part in template:
        for found in PLACEHOLDER_RE.findall(part):
            if found not in allowed:
                raise ValueError(
                    f"{where} uses the unknown placeholder {found} in {part!r}; "
                    f"the placeholders are {', '.join(allowed)}"
                )
    return template


class ParamSpec(BaseModel):
    """One parameter of a trainer: the flag it maps to, its type, range and default."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "str", "bool", "path"]
    flag: str
    help: str
    default: Scalar | None = None
    min: float | None = None
    max: float | None = None
    choices: list[Scalar] | None = None
    must_exist: bool = False
    min_files: int | None = Field(default=None, ge=1, description="input folder: fewest files matching file_glob")
    file_glob: str = Field(default="**/*", description="which files of an input folder count, e.g. '**/*.png'")
    output: bool = Field(default=False, description="the trainer writes here: pre-flight refuses a non-empty one")
    decode: Literal["image", "torch", "numpy", "json"] | None = Field(
        default=None, description="input: pre-flight decodes one sample (the file, or the first match of file_glob)"
    )
    prepare: list[str] | None = Field(
        default=None,
        description="For a path: the argv template of the command that creates it ({value} is the path).",
    )

    @field_validator("flag")
    @classmethod
    def _flag_shape(cls, flag: str) -> str:
        if not FLAG_RE.match(flag):
            raise ValueError(f"flag {flag!r} must look like --name (letters, digits, '-' and '_')")
        return flag

    @model_validator(mode="after")
    def _default_fits(self) -> ParamSpec:
        if (self.must_exist or self.output or self.min_files or self.decode) and self.type != "path":
            raise ValueError("must_exist, min_files, decode and output apply to path parameters only")
        if self.output and self.must_exist:
            raise ValueError("a path is either an input (must_exist) or an output, not both")
        if self.prepare is not None and (self.type != "path" or not self.prepare):
            raise ValueError('prepare is an argv template for a path parameter, e.g. ["{python}", ...]')
        if self.prepare is not None:
            check_placeholders(self.prepare, PREPARE_PLACEHOLDERS, "prepare")
        if self.default is not None:
            coerce_value("default", self, self.default, project=None)
        return self


class MemorySpec(BaseModel):
    """How pre-flight estimates a trainer's peak memory (trainers/memprobe.py runs it)."""

    model_config = ConfigDict(extra="forbid")

    script: str = Field(description="the file defining the function, e.g. '{trainer_dir}/train.py'")
    function: str = Field(default="memory_step", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batch_param: str = Field(default="batch_size", description="the int parameter the estimate varies")
    batch_default: int | None = Field(default=None, ge=1, description="its value when the config leaves it unset")

    @field_validator("script")
    @classmethod
    def _script_placeholders(cls, script: str) -> str:
        return check_placeholders([script], PLACEHOLDERS, "memory.script")[0]


class TrainerSpec(BaseModel):
    """A trainer: its command template, parameters and where its metrics go."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    command: Annotated[list[str], Field(min_length=1)]
    params: dict[str, ParamSpec]
    output_flag: str | None = None
    primary_metric: str = "val/loss"
    primary_mode: Literal["min", "max"] = "min"
    env: dict[str, str] = Field(default_factory=dict)
    exclusive: list[list[str]] = Field(
        default_factory=list,
        description="groups of parameters of which at most one is set: a later layer's choice clears the others",
    )
    known_good: dict[str, KnownGood] = Field(default_factory=dict)
    danger: list[DangerRule] = Field(default_factory=list)
    memory: MemorySpec | None = None
    resume_checkpoint: str | None = Field(
        default=None,
        description="glob, in a run's output folder, of the checkpoint resume_run passes to the `resume` parameter",
    )
    chance: ChanceLevels = Field(
        default_factory=dict,
        description="chance level of an accuracy metric, by name (e.g. {'val/acc' = 0.2}); else inferred as 1/k",
    )
    remedies: dict[str, Annotated[str, Field(min_length=1, max_length=REMEDY_MAX_CHARS)]] = Field(
        default_factory=dict,
        description="this trainer's own remedy per diagnosis rule, with its flags (e.g. overfitting = "
        "'--augment, --dropout 0.2'); replaces the generic advice in that rule's findings",
    )
    source: Path | None = None

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, command: list[str]) -> list[str]:
        return check_placeholders(command, PLACEHOLDERS, "command")

    @field_validator("remedies")
    @classmethod
    def _remedy_rules(cls, remedies: dict[str, str]) -> dict[str, str]:
        for rule in remedies:
            if rule not in RULE_IDS:
                raise ValueError(f"remedies names the rule {rule!r}; the rules are {', '.join(RULE_IDS)}")
        return remedies

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in params:
            if not NAME_RE.match(name):
                raise ValueError(f"parameter name {name!r} must be lower_snake_case")
        return params

    @model_validator(mode="after")
    def _rules_name_params(self) -> TrainerSpec:
        for group in self.exclusive:
            for name in group:
                if name not in self.params:
                    raise ValueError(f"exclusive group {group} names {name!r}, which is not a parameter")
        for name in self.known_good:
            if name not in self.params:
                raise ValueError(f"known_good names {name!r}, which is not a parameter")
        ids = [rule.id for rule in self.danger]
        if len(ids) != len(set(ids)):
            raise ValueError(f"danger rule ids must be unique: {ids}")
        for rule in self.danger:
            for name in rule.when:
                if name not in self.params:
                    raise ValueError(f"danger rule {rule.id!r} tests {name!r}, which is not a parameter")
        if self.resume_checkpoint and (self.params.get("resume") is None or self.params["resume"].type != "path"):
            raise ValueError("resume_checkpoint needs a path parameter named `resume`")
        if self.memory and (
            self.memory.batch_param not in self.params or self.params[self.memory.batch_param].type != "int"
        ):
            raise ValueError(f"memory.batch_param {self.memory.batch_param!r} must name an int parameter")
        flags = {p.flag for p in self.params.values()}
        for rule, text in self.remedies.items():
            for flag in REMEDY_FLAG_RE.findall(text):
                if flag not in flags:  # a flag the launcher cannot pass is advice no one can follow
                    raise ValueError(
                        f"remedies.{rule} suggests {flag}, which is no parameter's flag; "
                        f"the flags are {', '.join(sorted(flags))}"
                    )
        return self

    @property
    def trainer_dir(self) -> Path:
        """Folder of the spec file; `{trainer_dir}` in the command expands to it."""
        assert self.source is not None, "spec loaded without a source path"
        return self.source.parent


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "int": TypeAdapter(int),
    "float": TypeAdapter(float),
    "bool": TypeAdapter(bool),
    "str": TypeAdapter(str),
    "path": TypeAdapter(str),
}


def coerce_value(name: str, spec: ParamSpec, value: Any, project: Path | None) -> Scalar:
    """Check one value against its spec and return it in the spec's type.

    Strings that spell a number or a boolean exactly ("64", "1e-4", "true") are accepted for
    numeric and boolean parameters, since agents and shells pass them that way.

    Raises:
        InvalidInput: with the expected type, range or choices in the message.
    """
    if isinstance(value, bool) and spec.type in ("int", "float"):
        raise InvalidInput(f"parameter {name!r} takes {_a(spec.type)}, got the boolean {value!r}.")
    try:
        typed = _ADAPTERS[spec.type].validate_python(value)
    except ValidationError:
        raise InvalidInput(f"parameter {name!r} takes {_a(spec.type)}, got {value!r}; {_expectation(spec)}.") from None
    if isinstance(typed, float) and not math.isfinite(typed):
        raise InvalidInput(f"parameter {name!r} must be a finite number, got {value!r}.")
    if isinstance(typed, str):
        _check_text(name, typed)
    if spec.choices is not None and typed not in spec.choices:
        raise InvalidInput(f"parameter {name!r} is {typed!r}; choose one of {spec.choices}.")
    if isinstance(typed, int | float) and not isinstance(typed, bool):
        if spec.min is not None and typed < spec.min:
            raise InvalidInput(f"parameter {name!r} is {typed}; {_expectation(spec)}.")
        if spec.max is not None and typed > spec.max:
            raise InvalidInput(f"parameter {name!r} is {typed}; {_expectation(spec)}.")
    if spec.type == "path" and project is not None:
        from mcp_server.paths import confine

        confine(project, typed, what=f"parameter {name!r}")
    return typed


def _check_text(name: str, text: str) -> None:
    if text.startswith("-"):
        raise InvalidInput(f"parameter {name!r} may not start with '-' (it would read as a flag): {text!r}.")
    if any(ch in text for ch in "\x00\r\n"):
        raise InvalidInput(f"parameter {name!r} may not contain NUL or line breaks.")
    if len(text) > MAX_STR_LEN:
        raise InvalidInput(f"parameter {name!r} is {len(text)} characters long; at most {MAX_STR_LEN}.")


def _a(type_name: str) -> str:
    return f"an {type_name}" if type_name == "int" else f"a {type_name}"


def _expectation(spec: ParamSpec) -> str:
    text = f"pass {_a(spec.type)}"
    if spec.min is not None and spec.max is not None:
        text += f" from {spec.min:g} to {spec.max:g}"
    elif spec.min is not None:
        text += f" of at least {spec.min:g}"
    elif spec.max is not None:
        text += f" of at most {spec.max:g}"
    if spec.choices is not None:
        text += f", one of {spec.choices}"
    if spec.help:
        text += f" ({spec.help})"
    return text


def resolve_config(
    spec: TrainerSpec, layers: list[tuple[str, dict[str, Any]]], project: Path
) -> dict[str, Scalar | None]:
    """Merge parameter values: spec defaults, then each named layer in order.

    Args:
        spec: the trainer spec.
        layers: e.g. `[("experiment 001", args), ("overrides", overrides)]`; later wins.
        project: root that path parameters must stay inside.

    Raises:
        InvalidInput: for an unknown parameter (the message lists the known ones) or a bad value.
    """
    config: dict[str, Scalar | None] = {name: p.default for name, p in spec.params.items()}
    for origin, values in layers:
        for group in spec.exclusive:
            chosen = [name for name in group if name in values]
            if len(chosen) > 1:
                raise InvalidInput(f"{origin}: set only one of {group}, not {chosen}.")
            for other in group if chosen else ():
                config[other] = None  # this layer picks chosen[0]; an earlier choice no longer applies
        for name, value in values.items():
            if name not in spec.params:
                known = ", ".join(sorted(spec.params))
                raise InvalidInput(
                    f"{origin}: unknown parameter {name!r} for trainer {spec.name!r}; known parameters: {known}."
                )
            try:
                config[name] = coerce_value(name, spec.params[name], value, project)
            except InvalidInput as exc:
                raise InvalidInput(f"{origin}: {exc}") from None
    return config


def expand(template: list[str], *, python: str, trainer_dir: Path, project: Path, value: str = "") -> list[str]:
    """Fill an argv template's placeholders: {python}, {trainer_dir}, {project_dir}, {value}."""
    subst = {"{python}": python, "{trainer_dir}": str(trainer_dir), "{project_dir}": str(project), "{value}": value}
    argv = []
    for part in template:
        for key, val in subst.items():
            part = part.replace(key, val)
        argv.append(part)
    return argv


def build_argv(
    spec: TrainerSpec, config: dict[str, Scalar | None], *, python: str, project: Path, output_dir: Path | None
) -> list[str]:
    """The exact argv for a run: the command template expanded, then one flag per set value.

    Booleans are switches (the flag alone when true); None leaves the trainer's own default.
    """
    argv = expand(spec.command, python=python, trainer_dir=spec.trainer_dir, project=project)
    for name, param in spec.params.items():
        value = config.get(name)
        if value is None or (param.type == "bool" and value is False):
            continue
        argv.append(param.flag)
        if param.type != "bool":
            argv.append(repr(value) if isinstance(value, float) else str(value))
    if spec.output_flag and output_dir is not None:
        argv += [spec.output_flag, str(output_dir)]
    return argv
