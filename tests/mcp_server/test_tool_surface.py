"""The tools as a client sees them, against what the repository says about them.

`list_tools` over a real stdio session (the plugin's launcher) is compared with the committed
snapshot `tools_snapshot.json`: a changed name, parameter, range, enum or result field shows
up as a diff in review, never by surprise in a client. After a deliberate change, regenerate
it and commit the diff:

    TRAINGUARD_UPDATE_SNAPSHOT=1 python -m pytest tests/mcp_server/test_tool_surface.py

The tool lists of the `/train` skill, the training-runner agent and the project's settings
name exactly the server's tools (with the exceptions stated here, each for its reason).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

import anyio
from mcp import Client

from conftest import REPO, launcher_params

SNAPSHOT = Path(__file__).with_name("tools_snapshot.json")
UPDATE_VAR = "TRAINGUARD_UPDATE_SNAPSHOT"
PREFIX = "mcp__plugin_trainguard_trainguard__"  # how Claude Code names a plugin's MCP tool
# The agent works unattended: installing torch (minutes, gigabytes) is for the user to approve
# (agents/training-runner.md says so), so only the /train skill, which asks first, may call it.
NOT_FOR_THE_AGENT = {"install_torch"}
# settings.json allows without asking the tools that change nothing (idempotent, not destructive:
# read-only ones, and pre-flight's checks that run project code but write nothing), the
# scratchpad entries and the hand-off notes, which are the agent's own notes (a new file each).
ALSO_ALLOWED = {"scratchpad_append", "handoff_write"}


def listed_tools(project: Path) -> list[dict]:
    """Every tool as `list_tools` over stdio returns it: name, annotations and both schemas."""

    async def go():
        async with Client(launcher_params(project)) as client:
            return (await client.list_tools()).tools

    return [
        {
            "name": t.name,
            "annotations": t.annotations.model_dump(mode="json", exclude_none=True),
            "input_schema": t.input_schema,
            "output_schema": t.output_schema,
        }
        for t in sorted(anyio.run(go), key=lambda t: t.name)
    ]


def test_list_tools_matches_the_committed_snapshot(project):
    now = json.dumps(listed_tools(project), indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_VAR) == "1":
        SNAPSHOT.write_text(now)
    assert SNAPSHOT.exists(), f"no {SNAPSHOT.name}: run with {UPDATE_VAR}=1 to write it, then commit it"
    before = SNAPSHOT.read_text()
    diff = "".join(difflib.unified_diff(before.splitlines(True), now.splitlines(True), SNAPSHOT.name, "list_tools"))
    assert not diff, (
        f"the tools changed against {SNAPSHOT.name}; if that was meant, run with {UPDATE_VAR}=1 and "
        f"commit the new snapshot.\n{diff[:6000]}"
    )


def _frontmatter_list(path: Path, key: str) -> set[str]:
    """The comma-separated `key:` line of a Markdown file's front matter."""
    text = path.read_text(encoding="utf-8")
    front = text.split("---", 2)[1]
    line = next(m for m in re.finditer(rf"(?m)^{re.escape(key)}:(.*)$", front))
    return {part.strip() for part in line.group(1).split(",") if part.strip()}


def _ours(names: set[str]) -> set[str]:
    return {n.removeprefix(PREFIX) for n in names if n.startswith(PREFIX)}


def test_the_skill_agent_and_settings_name_exactly_the_servers_tools(project):
    from mcp_server.server import mcp

    async def go():  # in memory: the names and annotations are the same as over stdio (the snapshot's test)
        async with Client(mcp) as client:
            return (await client.list_tools()).tools

    served = {t.name: t.annotations for t in anyio.run(go)}
    skill = _frontmatter_list(REPO / "skills" / "train" / "SKILL.md", "allowed-tools")
    agent = _frontmatter_list(REPO / "agents" / "training-runner.md", "tools")
    allow = set(json.loads((REPO / ".claude" / "settings.json").read_text())["permissions"]["allow"])
    other_skills = [
        (f"skills/{p.parent.name}/SKILL.md", _frontmatter_list(p, "allowed-tools"))
        for p in sorted((REPO / "skills").glob("*/SKILL.md"))
        if p.parent.name != "train"
    ]
    assert {where for where, _ in other_skills} >= {"skills/handoff/SKILL.md", "skills/sweep/SKILL.md"}
    for where, names in (
        ("skills/train/SKILL.md", skill),
        ("agents/training-runner.md", agent),
        (".claude/settings.json", allow),
        *other_skills,
    ):
        stale = sorted(n for n in names if n.startswith("mcp__") and n.removeprefix(PREFIX) not in served)
        assert not stale, f"{where} names tools the server does not have: {stale}"
    assert _ours(skill) == set(served)
    assert _ours(agent) == set(served) - NOT_FOR_THE_AGENT
    changes_nothing = {name for name, a in served.items() if a.idempotent_hint and not a.destructive_hint}
    assert {"list_runs", "preflight"} <= changes_nothing and "launch_run" not in changes_nothing
    assert _ours(allow) == changes_nothing | ALSO_ALLOWED
