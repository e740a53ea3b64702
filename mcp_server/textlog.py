"""Reading log text safely: the end of a file, bounded, without control characters.

Logs are written by processes we do not control; whatever they print reaches an agent's
context only through here: at most a bounded number of characters, terminal escapes and
control characters removed, invalid UTF-8 replaced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel

from mcp_server.errors import InvalidInput

TAIL_LINES = 12
TAIL_CHARS = 2000
MAX_LINES = 500
MAX_CHARS = 20_000
MAX_PATTERN = 200
SCAN_BYTES = 8 * 2**20  # a pattern search reads at most the last 8 MiB of a log
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def sanitize(text: str) -> str:
    """Strip control characters and terminal escapes from log text (newlines and tabs stay)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def read_tail(path: Path, nbytes: int) -> str:
    """The last `nbytes` of a file as text (a partial first line is dropped); '' if it is missing."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            data = fh.read(nbytes)
    except (FileNotFoundError, IsADirectoryError):
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > nbytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def tail(path: Path, lines: int = TAIL_LINES, max_chars: int = TAIL_CHARS) -> str:
    """The last lines of a log file, bounded in size and cleaned of control characters."""
    text = sanitize("\n".join(read_tail(path, 64 * max_chars).splitlines()[-lines:]))
    return text[-max_chars:]


class LogTail(BaseModel):
    """`tail_log`: matching lines from the end of one of a run's logs."""

    run_id: str
    stream: str
    lines: list[str]
    matched: int | None
    truncated: bool
    file_bytes: int


def tail_lines(
    path: Path, lines: int, pattern: str | None, max_chars: int = MAX_CHARS
) -> tuple[list[str], int | None, bool]:
    """The last `lines` lines (those matching `pattern`, a regex, if given), within `max_chars`.

    Returns (lines, how many matched in the part read, whether anything was cut).

    Raises:
        InvalidInput: for a bad line count or pattern.
    """
    if not 1 <= lines <= MAX_LINES:
        raise InvalidInput(f"lines is {lines}; pass 1 to {MAX_LINES}.")
    regex = None
    if pattern is not None:
        if len(pattern) > MAX_PATTERN:
            raise InvalidInput(f"pattern is {len(pattern)} characters; at most {MAX_PATTERN}.")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise InvalidInput(f"pattern {pattern!r} is not a valid regular expression: {exc}.") from None
    text = read_tail(path, SCAN_BYTES if regex else min(SCAN_BYTES, lines * 1024 + 4096))
    all_lines = [sanitize(line) for line in text.splitlines()]
    matched = None
    if regex:
        all_lines = [line for line in all_lines if regex.search(line)]
        matched = len(all_lines)
    picked = all_lines[-lines:]
    truncated = len(all_lines) > lines
    out, used = [], 0
    for line in reversed(picked):  # newest first until the budget is spent, then back in order
        line = line[:1000] + (" [...]" if len(line) > 1000 else "")
        if used + len(line) > max_chars:
            truncated = True
            break
        out.append(line)
        used += len(line) + 1
    return out[::-1], matched, truncated
