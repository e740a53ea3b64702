"""Where things live: the plugin's own files, the user's project, its runs, scratchpad and hand-off notes.

The plugin may be installed anywhere (Claude Code copies it into its cache and ignores
`cwd`), so the user's project comes from `TRAINGUARD_PROJECT_DIR` (`trainguard serve --project`,
for other MCP clients), else `CLAUDE_PROJECT_DIR`, else the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp_server.errors import InvalidInput

_PACKAGE = Path(__file__).resolve().parent
PLUGIN_ROOT = _PACKAGE.parent
"""The folder holding the packages: the checkout (the plugin), or site-packages for a wheel."""
SOURCE_TREE = (PLUGIN_ROOT / "pyproject.toml").is_file() and (PLUGIN_ROOT / "experiments").is_dir()
"""True when running from a checkout, whose packages a child interpreter finds only on PYTHONPATH."""
BUNDLED_EXPERIMENTS = PLUGIN_ROOT / "experiments" if SOURCE_TREE else _PACKAGE / "bundled_experiments"
BUNDLED_TRAINERS = PLUGIN_ROOT / "trainers"


def project_root() -> Path:
    """The user's project: `TRAINGUARD_PROJECT_DIR`, else `CLAUDE_PROJECT_DIR`, else the working directory."""
    chosen = os.environ.get("TRAINGUARD_PROJECT_DIR") or os.environ.get("CLAUDE_PROJECT_DIR") or os.getcwd()
    return Path(chosen).resolve()


def plugin_data() -> Path:
    """The plugin's persistent data folder: `CLAUDE_PLUGIN_DATA` (Claude Code's, kept across plugin
    updates), else `$XDG_DATA_HOME/trainguard`, else `~/.local/share/trainguard`. The same rule as
    bin/trainguard-bootstrap's, which makes the server's environment there."""
    if os.environ.get("CLAUDE_PLUGIN_DATA"):
        return Path(os.environ["CLAUDE_PLUGIN_DATA"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "trainguard"


def runs_root(project: Path | None = None) -> Path:
    """Folder holding one sub-folder per run: `TRAINGUARD_RUNS_DIR`, else `<project>/runs`."""
    override = os.environ.get("TRAINGUARD_RUNS_DIR")
    if override:
        return Path(override).resolve()
    return (project or project_root()) / "runs"


def scratchpad_root(project: Path | None = None) -> Path:
    """Folder of the agents' scratchpads (seed 002): `<project>/.claude/scratchpad`."""
    return (project or project_root()) / ".claude" / "scratchpad"


def handoff_root(project: Path | None = None) -> Path:
    """Folder of the session hand-off notes (seed 003): `<project>/.claude/handoff`."""
    return (project or project_root()) / ".claude" / "handoff"


def confine(root: Path, candidate: str | os.PathLike[str], what: str = "path") -> Path:
    """Resolve `candidate` (relative to `root`) and refuse it if it leaves `root`.

    Symlinks are resolved first, so a link pointing outside the root is refused too.

    Raises:
        InvalidInput: if the resolved path is not inside `root`.
    """
    text = os.fspath(candidate)
    if "\x00" in text:
        raise InvalidInput(f"{what} contains a NUL byte; pass a plain path inside {root}.")
    root = root.resolve()
    resolved = (root / text).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise InvalidInput(f"{what} {text!r} resolves to {resolved}, outside {root}; use a path inside it.")
    return resolved
