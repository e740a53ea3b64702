"""One pre-flight check: its verdict, what it saw, and the fix. Shared by every module that checks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Verdict = Literal["pass", "warn", "fail"]


class Check(BaseModel):
    """One pre-flight check: its verdict, what it saw, and the fix when it is not a pass."""

    name: str
    verdict: Verdict
    detail: str
    fix: str | None = None


def overall(checks: list[Check]) -> Verdict:
    """The worst verdict of the checks."""
    verdicts = {c.verdict for c in checks}
    return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"
