"""The dashboard's views without a browser: seed 004's panel from a real PPO run, and the
versions that let a page that polls get `unchanged`."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import wait_until
from mcp_server import runs
from mcp_server.dashboard import views
from mcp_server.rundir import open_run

REPO = Path(__file__).resolve().parents[2]


def test_a_ppo_run_gets_seed_004s_panel_per_mode(tmp_path):
    (tmp_path / "tiny.toml").write_text("[env]\nmax_steps = 40\n[training]\ncheckpoint_every = 100\n")
    env = {**os.environ, "TRAINGUARD_METRICS": str(tmp_path / "metrics.jsonl")}
    env.pop("TRAINGUARD_RUN_DIR", None)
    subprocess.run(
        [sys.executable, str(REPO / "trainers" / "ppo_gridworld.py"), "-m", "ground_truth,proxy", "-e", "8", "-u", "3"]
        + ["--eval-episodes", "4", "--device", "cpu", "--config", str(tmp_path / "tiny.toml")]
        + ["--output-dir", str(tmp_path / "out")],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    curves = views.curves_of(tmp_path, "ground_truth/return")
    assert [m["mode"] for m in curves["ppo"]] == ["ground_truth", "proxy"]
    for mode in curves["ppo"]:
        charts = {c["title"]: sorted(s["name"].split("/", 1)[1] for s in c["series"]) for c in mode["charts"]}
        assert charts == {
            "episode reward": ["food", "poison", "return"],
            "episode length": ["length"],
            "policy and value loss": ["policy_loss", "value_loss"],
            "entropy": ["entropy"],
            "action distribution": ["action_down", "action_left", "action_right", "action_up"],
        }
        shares = [s for c in mode["charts"] if c["title"] == "action distribution" for s in c["series"]]
        assert all(len(s["y"]) == 3 for s in shares)  # one share per update
        assert abs(sum(s["y"][-1] for s in shares) - 1.0) < 1e-6
    drawn = {s["name"] for p in curves["panels"] for s in p["series"]}
    assert "ground_truth/policy_loss" not in drawn and "ground_truth/sps" in drawn  # the rest, once


def test_a_page_that_polls_gets_unchanged_until_its_run_changes(scripted, monkeypatch):
    monkeypatch.setattr(views, "LIVE_REFRESH_S", 0.0)
    page = views.Views(scripted)
    run_id = runs.launch("901", project=scripted).run_id  # succeeds after a few epochs
    first = page.run(run_id)
    listed = page.runs()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    wait_until(lambda: open_run(scripted / "runs", run_id).read_state().status == "succeeded", what="the run to end")
    done = page.run(run_id, since=first["version"])
    assert done["version"] != first["version"] and done["run"]["status"] == "succeeded"
    assert done["curves"]["points"] > 0 and not done["can_stop"] and done["run"]["findings"] == 0
    again = page.run(run_id, since=done["version"])
    assert again["unchanged"] and again["version"] == done["version"]
    rows = page.runs(since=listed["version"])
    assert not rows.get("unchanged") and rows["runs"][0]["status"] == "succeeded"
    assert page.runs(since=rows["version"])["unchanged"]
    assert page.runs(status="failed")["shown"] == 0 and page.runs(experiment="901")["shown"] == 1


def test_a_live_run_is_summarised_once_for_its_row_and_its_page_and_again_when_it_ends(scripted, monkeypatch):
    summarised = []
    real = views.summarize_run_dir
    monkeypatch.setattr(views, "summarize_run_dir", lambda *a, **k: summarised.append(a[0].name) or real(*a, **k))
    page = views.Views(scripted)
    run_id = runs.launch("902", project=scripted).run_id  # logs every 0.05 s until stopped
    wait_until(lambda: (scripted / "runs" / run_id / "metrics.jsonl").is_file(), what="the run to log")
    page.runs()
    live = page.run(run_id)
    assert summarised == [run_id] and live["can_stop"]  # the page took the row's summary
    page.runs()
    assert summarised == [run_id]  # within DETAILS_REFRESH_S: not again, however fast it logs
    runs.stop(run_id, 30.0, scripted)
    ended = page.run(run_id)
    assert summarised == [run_id, run_id] and ended["run"]["status"] == "stopped"  # its final summary at once
