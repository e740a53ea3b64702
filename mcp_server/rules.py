"""A trainer's known-good values and danger rules: structured data, evaluated without `eval`.

Seed 000's `/train` skill carries a table of known-good hyperparameters (each with the reason)
and a list of dangerous settings. Both live in the trainer spec:

    [known_good.lr]
    value = 1e-5
    reason = "7x lower than the 1e-4 default prevents instability"

    [[danger]]
    id = "renderer-memory"
    when = { renderer = { in = ["wavefield", "fourier"] } }
    message = "WaveField and Fourier renderers crash with memory fragmentation."
    fix = "Use renderer = 'tile'."

A rule fires when every condition of its `when` holds for the resolved configuration.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = bool | int | float | str
RULE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class Condition(BaseModel):
    """A test on one parameter's value; every operator given must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    glob: str | None = Field(default=None, description="fnmatch pattern on the value as text, case-insensitive")

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("a condition needs at least one of eq, ne, in, not_in, gt, ge, lt, le, glob")
        return self

    def holds(self, value: Scalar | None) -> bool:
        """Whether `value` satisfies every operator of this condition (None satisfies none)."""
        if value is None:
            return False
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        checks = [
            self.eq is None or value == self.eq,
            self.ne is None or value != self.ne,
            self.in_ is None or value in self.in_,
            self.not_in is None or value not in self.not_in,
            self.gt is None or (number is not None and number > self.gt),
            self.ge is None or (number is not None and number >= self.ge),
            self.lt is None or (number is not None and number < self.lt),
            self.le is None or (number is not None and number <= self.le),
            self.glob is None or fnmatch.fnmatch(str(value).lower(), self.glob.lower()),
        ]
        return all(checks)


class DangerRule(BaseModel):
    """A setting known to crash, waste the GPU or poison results; fires when all of `when` holds."""

    model_config = ConfigDict(extra="forbid")

    id: str
    when: dict[str, Condition] = Field(min_length=1)
    message: str
    fix: str | None = None
    severity: Literal["warn", "fail"] = "warn"

    @model_validator(mode="after")
    def _id_shape(self) -> DangerRule:
        if not RULE_ID_RE.match(self.id):
            raise ValueError(f"danger rule id {self.id!r} must be lower-case letters, digits and '-'")
        return self

    def fires(self, config: dict[str, Scalar | None]) -> bool:
        return all(cond.holds(config.get(param)) for param, cond in self.when.items())


class KnownGood(BaseModel):
    """The value that is known to work for a parameter, and why."""

    model_config = ConfigDict(extra="forbid")

    value: Scalar
    reason: str
    rel_tol: float = Field(default=0.0, ge=0.0, description="relative tolerance for numbers ('about 2.7')")

    def matches(self, value: Scalar | None) -> bool:
        if isinstance(self.value, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
            return math.isclose(value, self.value, rel_tol=self.rel_tol, abs_tol=1e-12)
        return value == self.value


def deviations(known_good: dict[str, KnownGood], config: dict[str, Scalar | None]) -> list[str]:
    """One line per parameter whose value differs from its known-good one, with the reason."""
    out = []
    for name, good in known_good.items():
        if not good.matches(config.get(name)):
            approx = "about " if good.rel_tol else ""
            out.append(f"{name}={config.get(name)!r} (known-good: {approx}{good.value!r}: {good.reason})")
    return out


def fired(rules: list[DangerRule], config: dict[str, Scalar | None]) -> list[DangerRule]:
    """The rules that fire for this configuration, in spec order."""
    return [rule for rule in rules if rule.fires(config)]
