"""Session hand-off notes (seed 003): `.claude/handoff/<UTC time>-NNN.md`.

The scratchpad is a log; a hand-off note is the one page the next session reads first: where
the work stands, what is done and left, the decisions and why, blockers, context and the next
action, in seed 003's shape (front matter with phase, status and last_updated, then one tagged
section each). The server adds a section of its own with the facts it knows
(`handoff_facts`), so the next session can tell what was measured from what was believed.

Every note is a new file (a history, never overwritten), written atomically under a lock, and
bounded: each section is clipped to its limit with a note, so the newest note always reads
back within one answer (`budget.ANSWER_CHARS`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Literal, get_args

import orjson
from pydantic import BaseModel, Field

from mcp_server import budget, handoff_facts, paths, safefiles, scratchpad, textlog
from mcp_server.errors import Conflict, InvalidInput

NoteStatus = Literal["in_progress", "blocked", "complete"]
NOTE_STATUSES: tuple[str, ...] = get_args(NoteStatus)

# Each section's limit in characters, in the order the note holds them (seed 003's, plus
# files_modified). Together with the facts they keep a note within NOTE_CHARS.
SECTIONS: dict[str, int] = {
    "current_state": 500,
    "completed_work": 450,
    "remaining_work": 400,
    "decisions_made": 400,
    "blockers": 250,
    "context": 350,
    "files_modified": 250,
    "next_action": 350,
}
FACTS_TAG = "server_facts"
FRONT_CHARS = 60  # phase and task: one line each
NOTE_CHARS = 5000  # a note as written, at most: the sections, the facts, the tags and front matter
READ_JSON_CHARS = 5000  # the note's text in the read answer, as JSON (escaped newlines count twice)
MAX_READ_BYTES = 64 * 2**10  # a note edited by hand may be long: read at most this much of it
MAX_NOTES_PER_SECOND = 999
NOTE_RE = re.compile(r"(\d{8}T\d{6}Z)-(\d{3})\.md")
_TAG_RE = re.compile(r"</?(" + "|".join([*SECTIONS, FACTS_TAG]) + r")\s*>", re.IGNORECASE)
_PLAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._/+():-]*")
_FRONT_RE = re.compile(r"([a-z_]{1,32}):[ \t]*(.*)")


def describe(section: str) -> str:
    """A section's description in the tool's schema: what it holds and its limit."""
    what = {
        "current_state": "where the work stands now, in a few sentences",
        "completed_work": "what is done (plans, this session's changes), as '- ' lines",
        "remaining_work": "what is left, as '- ' lines",
        "decisions_made": "each decision with its reason",
        "blockers": "what stops progress, or empty for none",
        "context": "what the next session needs to know to judge the results",
        "files_modified": "files changed, each with what changed",
        "next_action": "the next steps, numbered",
    }[section]
    return f"{what}; at most {SECTIONS[section]:,} characters (longer is clipped, with a note)"


def handoff_dir(project: Path) -> Path:
    """The notes' folder, refused if it (or `.claude`) is a link: a note must land in the project.

    Raises:
        InvalidInput: for a symbolic link, a folder outside the project, or a file in its place.
    """
    folder = paths.handoff_root(project)
    if folder.is_symlink():
        raise InvalidInput(
            f"{folder} is a symbolic link; trainguard writes hand-off notes only into a real folder "
            "of the project. Remove the link (move its notes into a plain .claude/handoff/ folder)."
        )
    paths.confine(project, folder.relative_to(project), what="the hand-off folder")
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder; move it away so hand-off notes can be written there.")
    return folder


def note_files(folder: Path) -> list[Path]:
    """The notes in `folder`, oldest first (their names sort in the order they were written)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NOTE_RE.fullmatch(p.name) and safefiles.is_regular(p))


def _field(text: str | None, limit: int) -> tuple[str, bool]:
    """A section's text: clean (no control characters, one kind of line break), no tag that could
    close or open a section, clipped to `limit` with a note. Returns it and whether it was clipped."""
    body = textlog.sanitize(text or "").strip()
    body = _TAG_RE.sub(lambda m: m.group(0).replace("<", "&lt;"), body)
    clipped = budget.clip(body, limit) or ""
    return clipped, clipped != body


def _scalar(text: str) -> str:
    """A front-matter value: plain when it reads unambiguously, else a double-quoted string."""
    plain = _PLAIN_RE.fullmatch(text) and ": " not in text and not text.endswith(":")
    return text if not text or plain else json.dumps(text, ensure_ascii=False)


def _one_line(text: str | None, limit: int) -> tuple[str, bool]:
    return _field(" ".join((text or "").split()), limit)


def front_matter(text: str) -> dict[str, str]:
    """The `key: value` lines between a note's opening `---` lines (quoted values unquoted)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    found: dict[str, str] = {}
    for line in text[4 : end if end > 0 else 0].split("\n"):
        m = _FRONT_RE.fullmatch(line.strip())
        if not m:
            continue
        value = m.group(2).strip()
        if value.startswith('"'):
            try:
                value = str(json.loads(value))
            except ValueError:
                pass
        found[m.group(1)] = budget.clip(value, 200) or ""
    return found


class WriteResult(BaseModel):
    """`handoff_write`: the note written, and what was clipped to keep it within its budget."""

    path: str
    name: str
    notes_total: int = Field(description="notes in .claude/handoff/, this one included")
    chars: int
    clipped: list[str] = Field(description="fields cut to their limit (the note says how much was left out)")
    runs_going: int
    results_listed: int
    findings_open: int
    baseline: str | None = Field(description="what the results were measured against: a run id or 'given'")
    next_step: str


def write(
    project: Path,
    *,
    current_state: str,
    completed_work: str,
    remaining_work: str,
    next_action: str,
    decisions_made: str = "",
    blockers: str = "",
    context: str = "",
    files_modified: str = "",
    phase: str = "",
    task: str = "",
    status: str = "in_progress",
    agent: str = "training-runner",
    baseline: str | None = None,
    now: dt.datetime | None = None,
) -> WriteResult:
    """Write a new note in seed 003's shape with the server's facts, never replacing one.

    `baseline` (a run id or a figure, as compare_runs takes it) defaults to the previous note's.

    Raises:
        InvalidInput: for a bad status or agent name, a linked folder, or a baseline that is
            neither a run nor a number.
        Conflict: if a thousand notes were written within one second.
    """
    if status not in NOTE_STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {list(NOTE_STATUSES)}.")
    if not isinstance(agent, str) or not scratchpad.AGENT_RE.fullmatch(agent):
        raise InvalidInput(f"agent {agent!r} is not a name: use lower-case letters, digits, '-' or '_'.")
    folder = handoff_dir(project)
    earlier = note_files(folder)
    if baseline is None and earlier:
        baseline = _read_front(earlier[-1]).get("baseline") or None
    base = handoff_facts.resolve_baseline(baseline, project)
    facts = handoff_facts.gather(project, base)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    stamp = f"{now:%Y-%m-%dT%H:%M:%SZ}"

    clipped: list[str] = []
    front: list[tuple[str, str]] = []
    for key, value in (("phase", phase), ("task", task)):
        line, cut = _one_line(value, FRONT_CHARS)
        clipped += [key] if cut else []
        if line:
            front.append((key, line))
    front += [("status", status), ("last_updated", stamp), ("agent", agent)]
    if base is not None:
        front.append(("baseline", base.label if base.label != "given" else f"{base.value:g}"))
    sections = {
        "current_state": current_state,
        "completed_work": completed_work,
        "remaining_work": remaining_work,
        "decisions_made": decisions_made,
        "blockers": blockers,
        "context": context,
        "files_modified": files_modified,
        "next_action": next_action,
    }
    parts = ["---", *(f"{k}: {_scalar(v)}" for k, v in front), "---", ""]
    for name, limit in SECTIONS.items():
        body, cut = _field(sections[name], limit)
        clipped += [name] if cut else []
        if name == "files_modified" and not body:
            continue  # seed 003 has it; a note without file changes leaves it out
        parts += [f"<{name}>", body or "None.", f"</{name}>", ""]
    parts += [f"<{FACTS_TAG}>", handoff_facts.render(facts, stamp), f"</{FACTS_TAG}>", ""]
    text = "\n".join(parts)
    assert len(text) <= NOTE_CHARS, f"a note of {len(text)} characters: the limits add up to more than NOTE_CHARS"

    folder.mkdir(parents=True, exist_ok=True)
    handoff_dir(project)  # made by someone else meanwhile: still no link
    with safefiles.open_append(folder / ".lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two writers at once: each gets its own name
        path = folder / _next_name(folder, now)
        safefiles.write_atomic(path, text.encode())
        total = len(note_files(folder))
    return WriteResult(
        path=str(path),
        name=path.name,
        notes_total=total,
        chars=len(text),
        clipped=clipped,
        runs_going=facts.going_total,
        results_listed=len(facts.results),
        findings_open=facts.findings_total,
        baseline=base.label if base else None,
        next_step="The next session reads it with handoff_read."
        + (f" Clipped to fit: {', '.join(clipped)}; keep those shorter." if clipped else ""),
    )


def _next_name(folder: Path, now: dt.datetime) -> str:
    """A name no note has, sorting after every note there (a clock set back still sorts last)."""
    stamp = f"{now:%Y%m%dT%H%M%SZ}"
    names = [p.name for p in note_files(folder)]
    newest = NOTE_RE.fullmatch(names[-1]) if names else None
    if newest and newest.group(1) >= stamp:
        stamp, first = newest.group(1), int(newest.group(2)) + 1
    else:
        first = 1
    for n in range(first, MAX_NOTES_PER_SECOND + 1):
        name = f"{stamp}-{n:03d}.md"
        if not os.path.lexists(folder / name):
            return name
    raise Conflict(f"{MAX_NOTES_PER_SECOND} hand-off notes within one second in {folder}; wait a second and retry.")


def _read_front(path: Path) -> dict[str, str]:
    try:
        head = safefiles.read_bytes(path, follow_links=False, limit=2048).decode("utf-8", errors="replace")
    except (OSError, InvalidInput):
        return {}
    return front_matter(head)


class HandoffNote(BaseModel):
    """`handoff_read`: the newest note, bounded, and how many there are."""

    found: bool
    notes_total: int
    path: str | None = None
    name: str | None = None
    status: str | None = Field(None, description="the note's front matter: in_progress, blocked or complete")
    phase: str | None = None
    last_updated: str | None = None
    agent: str | None = None
    text: str = Field("", description="the whole note: front matter, tagged sections, server_facts")
    truncated: bool = False
    hint: str


def _fit_json(text: str, limit: int) -> tuple[str, bool]:
    """`text` clipped until its JSON form (escapes counted) fits in `limit` characters."""
    cut = False
    for _ in range(8):
        size = len(orjson.dumps(text))
        if size <= limit:
            break
        keep = int(len(text) * limit / size) - 40  # escapes are spread alike over what is kept
        text, cut = budget.clip(text, max(budget.MIN_TEXT, keep)) or "", True
    return text, cut


def read(project: Path) -> HandoffNote:
    """The newest note, within the answer budget, with its front matter; or what to do without one.

    Raises:
        InvalidInput: if the notes' folder is a link (see `handoff_dir`).
    """
    folder = handoff_dir(project)
    notes = note_files(folder)
    if not notes:
        return HandoffNote(
            found=False,
            notes_total=0,
            hint=f"No hand-off note in {folder}: this is a fresh start. Read the scratchpad "
            "(scratchpad_read) and list_runs; write one with handoff_write before you return with work left.",
        )
    newest = notes[-1]
    with safefiles.open_read(newest, follow_links=False) as fh:
        data = fh.read(MAX_READ_BYTES + 1)
    text = textlog.sanitize(data[:MAX_READ_BYTES].decode("utf-8", errors="replace"))
    text, cut = _fit_json(text, READ_JSON_CHARS)
    front = front_matter(text)
    return HandoffNote(
        found=True,
        notes_total=len(notes),
        path=str(newest),
        name=newest.name,
        status=front.get("status"),
        phase=front.get("phase"),
        last_updated=front.get("last_updated"),
        agent=front.get("agent"),
        text=text,
        truncated=cut or len(data) > MAX_READ_BYTES,
        hint="Its server_facts were true when it was written: check list_runs for the runs it names "
        "before launching more, then do its next_action."
        + (f" {len(notes) - 1} older notes are beside it in {folder}." if len(notes) > 1 else ""),
    )
