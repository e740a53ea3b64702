import datetime as dt

import pytest

from mcp_server import scratchpad
from mcp_server.errors import InvalidInput


def test_append_creates_the_day_file_with_a_heading(tmp_path):
    now = dt.datetime(2026, 11, 22, 14, 3)
    path = scratchpad.append(tmp_path, "training-runner", "launched run x", kind="launch", now=now)
    assert path == tmp_path / ".claude/scratchpad/training-runner/2026-11-22.md"
    scratchpad.append(tmp_path, "training-runner", "val acc 0.9\nno NaN", now=now)
    assert path.read_text() == (
        "# training-runner scratchpad, 2026-11-22\n\n"
        "- 14:03 [launch] launched run x\n"
        "- 14:03 [note] val acc 0.9\n  no NaN\n"
    )


@pytest.mark.parametrize("agent", ["../etc", "a/b", "", "UPPER", ".hidden", "x" * 80])
def test_agent_names_cannot_leave_the_scratchpad_folder(tmp_path, agent):
    with pytest.raises(InvalidInput, match="not a scratchpad name"):
        scratchpad.append(tmp_path, agent, "x")


def test_symlinked_agent_folder_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "proj" / ".claude" / "scratchpad"
    root.mkdir(parents=True)
    (root / "evil").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside"):
        scratchpad.append(tmp_path / "proj", "evil", "x")
    assert list(outside.iterdir()) == []


def test_control_characters_are_dropped_and_size_is_bounded(tmp_path):
    path = scratchpad.append(tmp_path, "a", "ok\x1b[31m red\x07", now=dt.datetime(2026, 1, 1))
    assert "\x1b" not in path.read_text() and "\x07" not in path.read_text()
    with pytest.raises(InvalidInput, match="under 4000"):
        scratchpad.append(tmp_path, "a", "x" * 5000)
    with pytest.raises(InvalidInput, match="empty"):
        scratchpad.append(tmp_path, "a", " \n ")


def test_previous_day_and_latest(tmp_path):
    for day in (18, 20, 22):
        scratchpad.append(tmp_path, "training-runner", f"day {day}", now=dt.datetime(2026, 11, day, 9))
    prev = scratchpad.latest(tmp_path, "training-runner", dt.date(2026, 11, 22), 4000)
    assert prev.date == "2026-11-20" and "day 20" in prev.text
    assert scratchpad.today(tmp_path, "training-runner", 4000, dt.date(2026, 11, 22)).date == "2026-11-22"
    assert scratchpad.latest(tmp_path, "coordinator", None, 4000) is None
    trimmed = scratchpad.latest(tmp_path, "training-runner", None, 10)
    assert trimmed.truncated and len(trimmed.text) <= 14
