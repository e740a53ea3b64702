"""Errors a caller can act on.

Plain modules raise these; the MCP layer turns them into `ToolError`s and the CLI into a
message and a non-zero exit. The message always says what to do next.
"""


class TrainguardError(Exception):
    """A failure the user or the calling agent can fix; the message says how."""


class NotFound(TrainguardError):
    """An experiment, trainer, run or file that does not exist."""


class InvalidInput(TrainguardError):
    """An argument that fails validation (type, range, characters, path confinement)."""


class Conflict(TrainguardError):
    """The request clashes with the current state (a run already finished, a busy GPU...)."""
