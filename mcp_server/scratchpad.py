"""The agents' scratchpad (seed 002): `.claude/scratchpad/<agent>/YYYY-MM-DD.md`.

It is how sessions and agents hand work to each other: the coordinator writes what to
train; the training-runner reads that and its own previous day, logs launches, GPU
figures, loss summaries and errors, and ends with a 2-3 line summary. The server writes
launch and finish entries itself so they are there even if an agent forgets.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import re
from pathlib import Path

from pydantic import BaseModel

from mcp_server import paths, safefiles, textlog
from mcp_server.errors import InvalidInput

AGENT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # matched whole (fullmatch): no trailing newline
DATE_FILE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\.md")
KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_ENTRY_CHARS = 4000
VIEW_CHARS = (300, 5000)  # what `scratchpad_read` may return, least and most (shared between its files)


class ScratchpadFile(BaseModel):
    """One day's scratchpad of one agent, possibly trimmed to its end."""

    agent: str
    date: str
    path: str
    text: str
    truncated: bool


def agent_dir(project: Path, agent: str) -> Path:
    """The folder of one agent's scratchpad, with the agent name checked."""
    if not isinstance(agent, str) or not AGENT_RE.fullmatch(agent):
        raise InvalidInput(
            f"agent {agent!r} is not a scratchpad name: use lower-case letters, digits, '-' or '_' "
            "(e.g. 'training-runner', 'coordinator')."
        )
    root = paths.scratchpad_root(project)
    return paths.confine(root, agent, what="agent")


def clean_text(text: str, limit: int = MAX_ENTRY_CHARS) -> str:
    """Make every line break a newline, drop control characters and bidi overrides (keeping
    tabs), and bound the length: an entry cannot hide text or pass a line off as another entry."""
    text = textlog.sanitize(text).strip()
    if len(text) > limit:
        raise InvalidInput(f"entry is {len(text)} characters; keep it under {limit} (summarise, don't paste logs).")
    return text


class AppendResult(BaseModel):
    """`scratchpad_append` (and `trainguard scratchpad --append --json`): where the entry went."""

    path: str
    agent: str
    kind: str


def record(project: Path, agent: str, text: str, kind: str = "note") -> AppendResult:
    """`append`, as the model the tool and the CLI return."""
    return AppendResult(path=str(append(project, agent, text, kind=kind)), agent=agent, kind=kind)


def append(project: Path, agent: str, text: str, kind: str = "note", now: dt.datetime | None = None) -> Path:
    """Append a timestamped entry to today's file of `agent`, creating it with a heading.

    Returns:
        The path of the file written.
    """
    if not isinstance(kind, str) or not KIND_RE.fullmatch(kind):
        raise InvalidInput(f"kind {kind!r} must be a short lower-case word such as 'note' or 'gpu'.")
    body = clean_text(text)
    if not body:
        raise InvalidInput("entry is empty; write what happened, e.g. 'val acc 0.91 at epoch 12'.")
    now = now or dt.datetime.now()
    folder = agent_dir(project, agent)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now:%Y-%m-%d}.md"
    lines = body.split("\n")
    entry = f"- {now:%H:%M} [{kind}] {lines[0]}\n" + "".join(f"  {line}\n" for line in lines[1:])
    with safefiles.open_append(path) as fh:
        # The supervisor and the server may append at once: lock so entries never interleave.
        fcntl.flock(fh, fcntl.LOCK_EX)
        if fh.seek(0, 2) == 0:
            fh.write(f"# {agent} scratchpad, {now:%Y-%m-%d}\n\n".encode())
        fh.write(entry.encode())
    return path


MAX_READ_BYTES = 4 * 2**20  # a day's file is read from its end, at most this much


def _read_tail(agent: str, path: Path, max_chars: int) -> ScratchpadFile:
    with safefiles.open_read(path, follow_links=False) as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - MAX_READ_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    return trimmed(
        ScratchpadFile(agent=agent, date=path.stem, path=str(path), text=text, truncated=size > MAX_READ_BYTES),
        max_chars,
    )


def trimmed(found: ScratchpadFile | None, max_chars: int) -> ScratchpadFile | None:
    """The file's last `max_chars` characters (its newest entries), marked as truncated if cut."""
    if found is None or len(found.text) <= max_chars:
        return found
    return found.model_copy(update={"text": "...\n" + found.text[-max(0, max_chars - 4) :], "truncated": True})


def day_files(project: Path, agent: str) -> list[Path]:
    """The agent's day files, oldest first."""
    folder = agent_dir(project, agent)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if DATE_FILE_RE.fullmatch(p.name) and safefiles.is_regular(p))


def latest(project: Path, agent: str, before: dt.date | None, max_chars: int) -> ScratchpadFile | None:
    """The agent's most recent day file, or the most recent strictly before `before`."""
    files = day_files(project, agent)
    if before is not None:
        files = [p for p in files if p.stem < f"{before:%Y-%m-%d}"]
    return _read_tail(agent, files[-1], max_chars) if files else None


def today(project: Path, agent: str, max_chars: int, now: dt.date | None = None) -> ScratchpadFile | None:
    """The agent's file for today, if it has written one."""
    path = agent_dir(project, agent) / f"{(now or dt.date.today()):%Y-%m-%d}.md"
    return _read_tail(agent, path, max_chars) if safefiles.is_regular(path) else None


class ScratchpadView(BaseModel):
    """What an agent reads before it starts (seed 002's protocol)."""

    coordinator_latest: ScratchpadFile | None
    own_today: ScratchpadFile | None
    own_previous_day: ScratchpadFile | None
    hint: str


def view(project: Path, agent: str, coordinator: str, max_chars: int, now: dt.date | None = None) -> ScratchpadView:
    """The coordinator's latest day and the agent's today and previous day, `max_chars` shared
    between the files found, each trimmed to its end (the newest entries)."""
    today_ = now or dt.date.today()
    found = [
        latest(project, coordinator, None, 10**9),
        today(project, agent, 10**9, today_),
        latest(project, agent, today_, 10**9),
    ]
    share = max_chars // max(1, sum(f is not None for f in found))
    coordinator_latest, own_today, own_previous_day = (trimmed(f, share) for f in found)
    return ScratchpadView(
        coordinator_latest=coordinator_latest,
        own_today=own_today,
        own_previous_day=own_previous_day,
        hint="Nothing written yet: start today's file with scratchpad_append."
        if not (coordinator_latest or own_today or own_previous_day)
        else "Check runs your previous day left running with list_runs before launching more.",
    )
