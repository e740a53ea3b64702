"""The size budget of every tool answer: about 6,000 characters (~1,500 tokens) of text.

An agent's context is the scarce resource trainguard protects, so no answer may grow with the
project. Lists page (a total and where the next page starts), long texts are cut with a note
of what was left out, big fields are summarised. The server serialises answers compactly
(`server.tool`) and the tests drive every tool to its largest legal input against
`ANSWER_CHARS`.
"""

from __future__ import annotations

ANSWER_CHARS = 6000
LIST_CHARS = 4800  # what the rows of one page may take; the rest is the page's own fields


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
    return f"[... {len(text) - keep:,} earlier characters] " + text[len(text) - keep:]
