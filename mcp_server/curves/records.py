"""JSON lines as records: the one parser of every JSONL reader in trainguard (the curve readers'
line-by-line way, the watchdog, the GPU sampler's memory figures).

Standard library and orjson only, no numpy or polars: the supervisor runs the watchdog while its
trainer runs, and must stay one thread (see supervisor._final_summary).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

Loads = Callable[[bytes], Any]


def parse_lines(chunk: bytes, loads: Loads = orjson.loads) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a run of complete lines (each ending in a newline), and how many lines
    were not one. Blank lines are neither.

    The whole chunk goes through one `loads` call as a JSON array; only when that fails (a bad
    or blank line, a bare NaN that orjson refuses) are its lines parsed one by one, with the
    standard library's json, which reads NaN and Infinity as Python does.
    """
    lines = chunk.count(b"\n")
    try:
        records = loads(b"[" + chunk[:-1].replace(b"\n", b",") + b"]")
    except (ValueError, RecursionError):
        records = None
    # One value per line: a line holding two values ("1, 2") makes the count differ, unless a record
    # also spans two lines, which only a hand-made file does.
    if isinstance(records, list) and len(records) == lines and set(map(type, records)) == {dict}:
        return records, 0
    good: list[dict[str, Any]] = []
    bad = 0
    for line in chunk.split(b"\n")[:-1]:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(obj, dict):
            good.append(obj)
        else:
            bad += 1
    return good, bad


def complete_lines(data: bytes) -> tuple[bytes, bytes]:
    """(the complete lines of `data`, the torn rest after the last newline)."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def last_record(data: bytes, marker: bytes) -> dict[str, Any] | None:
    """The last complete line of `data` holding `marker` that is a JSON object, parsed."""
    lines, _ = complete_lines(data)
    for line in reversed(lines.split(b"\n")):
        if marker in line:
            records, _ = parse_lines(line + b"\n")
            if records:
                return records[0]
    return None
