"""The size budget of every tool answer: about 6,000 characters (~1,500 tokens) of text.

An agent's context is the scarce resource trainguard protects, so no answer may grow with the
project. Lists page (a total and where the next page starts), long texts are cut with a note
of what was left out, big fields are summarised. The server serialises answers compactly
(`server.tool`) and the tests drive every tool to its largest legal input against
`ANSWER_CHARS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

ANSWER_CHARS = 6000
MAX_CUTS = 400
MIN_TEXT = 32  # a string is never cut below this
LIST_CHARS = 4800  # what the rows of one page may take; the rest is the page's own fields


def page(items: Sequence[T], offset: int, limit: int, row: Callable[[T], R]) -> tuple[list[R], int | None]:
    """The rows of `items[offset:offset + limit]`, made by `row`, until LIST_CHARS is spent (at
    least one), and the offset the next page starts at (None after the last item)."""
    rows: list[R] = []
    used = 0
    for item in items[offset : offset + limit]:
        made = row(item)
        size = len(made.model_dump_json(exclude_none=True)) + 1
        if rows and used + size > LIST_CHARS:
            break
        rows.append(made)
        used += size
    end = offset + len(rows)
    return rows, (end if end < len(items) else None)


def clip(text: str | None, limit: int) -> str | None:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if text is None or len(text) <= limit:
        return text
    keep = max(0, limit - len(f" [... {len(text):,} more characters]"))
    return text[:keep] + f" [... {len(text) - keep:,} more characters]"


def clip_tail(text: str, limit: int) -> str:
    """The end of `text` within `limit` characters (the newest part of a log), saying what was cut."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(f"[... {len(text):,} earlier characters] "))
    return f"[... {len(text) - keep:,} earlier characters] " + text[len(text) - keep :]


def _size(node: Any) -> int:
    return len(orjson.dumps(node))


def fit(data: Any, limit: int = ANSWER_CHARS) -> tuple[Any, list[str]]:
    """`data` (JSON-shaped: dicts, lists, strings, numbers) cut until its compact JSON fits in
    `limit` characters, with a note of each cut.

    The last line of defence behind every tool's own paging and summaries: from the top, it
    goes down into whichever part holds most of the size, and there shortens the string or
    drops the later half of the list. A map keeps all its keys (it may be a model's fields);
    its values are cut instead. Types stay as they were, so the answer still matches its
    schema. Stops when nothing more can be cut.
    """
    notes: list[str] = []
    for _ in range(MAX_CUTS):
        if _size(data) <= limit:
            break
        data, cut = _cut(data, "", notes)
        if not cut:
            break
    return data, notes


def _cut(node: Any, where: str, notes: list[str]) -> tuple[Any, bool]:
    """`node` with its biggest part made smaller, and whether anything could be."""
    if isinstance(node, str):
        if len(node) <= MIN_TEXT:
            return node, False
        keep = max(MIN_TEXT, len(node) // 2)
        notes.append(f"{where or 'text'}: cut to {keep:,} of {len(node):,} characters")
        return clip(node, keep), True
    if isinstance(node, dict):
        for key in sorted(node, key=lambda k: -_size(node[k])):
            value, cut = _cut(node[key], f"{where}.{key}" if where else str(key), notes)
            if cut:
                return {**node, key: value}, True
        return node, False
    if not isinstance(node, list) or not node:
        return node, False
    sizes = [_size(v) for v in node]
    big = max(range(len(node)), key=sizes.__getitem__)
    if len(node) == 1 or sizes[big] * 2 > sum(sizes):  # one item holds most of it: cut inside that one
        value, cut = _cut(node[big], f"{where}[{big}]", notes)
        if cut or len(node) == 1:
            return [*node[:big], value, *node[big + 1 :]], cut
    keep = max(1, len(node) // 2)
    notes.append(f"{where or 'answer'}: {len(node) - keep:,} of {len(node):,} entries left out")
    return node[:keep], True
