"""Reading log text safely: the end of a file, bounded, without control characters.

Logs are written by processes we do not control; whatever they print reaches an agent's
context only through here: at most a bounded number of characters, terminal escapes and
control characters removed, invalid UTF-8 replaced.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import re2
from pydantic import BaseModel

from mcp_server import safefiles
from mcp_server.errors import InvalidInput

TAIL_LINES = 12
TAIL_CHARS = 2000
MAX_LINES = 500
MAX_CHARS = 4500  # of the lines as they travel (JSON-escaped): the answer stays within budget.ANSWER_CHARS
MAX_LINE_CHARS = 500
MAX_PATTERN = 200
SCAN_BYTES = 8 * 2**20  # a pattern search reads at most the last 8 MiB of a log
# Terminal escapes; C0 controls but tab and newline; DEL and the C1 controls; bidirectional
# marks, embeddings, overrides and isolates: whatever could hide text or make it read otherwise.
_CONTROL = re.compile(
    r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
# Everything Python's splitlines() ends a line at, so one line is one line for every reader.
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def sanitize(text: str) -> str:
    """Text safe to show: every kind of line break made a newline; control characters, bidi
    overrides and terminal escapes removed (newlines and tabs stay)."""
    return _CONTROL.sub("", _LINE_BREAKS.sub("\n", text))


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the caller's error, not a line on stderr


def compile_pattern(pattern: str) -> re2._Regexp:
    """A caller's regular expression, compiled by RE2: matching takes time linear in the text,
    so no pattern can stall the server (Python's `re` backtracks: `(a+)+$` on 40 a's and a '!'
    runs for minutes).

    Raises:
        InvalidInput: for a pattern too long, invalid, or using what RE2 leaves out
            (backreferences, lookaround).
    """
    if len(pattern) > MAX_PATTERN:
        raise InvalidInput(f"pattern is {len(pattern)} characters; at most {MAX_PATTERN}.")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidInput(
            f"pattern {pattern!r} is not a valid regular expression: {why}. Patterns are RE2 "
            "syntax: no backreferences or lookaround; use a plainer pattern."
        ) from None


def read_tail(path: Path, nbytes: int) -> str:
    """The last `nbytes` of a file as text (a partial first line is dropped); '' if it is missing.

    Only a regular file is read, never through a link (a FIFO would block the call forever).

    Raises:
        NotRegular: for a link, FIFO, device or folder in the file's place.
    """
    try:
        with safefiles.open_read(path, follow_links=False) as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            data = fh.read(nbytes)
    except FileNotFoundError:
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
    regex = compile_pattern(pattern) if pattern is not None else None
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
        line = line[:MAX_LINE_CHARS] + (" [...]" if len(line) > MAX_LINE_CHARS else "")
        size = len(json.dumps(line)) + 1  # as it travels: escapes count
        if used + size > max_chars:
            truncated = True
            break
        out.append(line)
        used += size
    return out[::-1], matched, truncated
