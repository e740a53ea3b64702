"""The dashboard in a real browser (Debian's chromium, driven by Playwright through its
executable_path) against real runs, and its guard against requests that must change nothing."""

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ok, wait_until, write_experiment
from mcp_server import procs, runs
from mcp_server.dashboard import serve
from mcp_server.rundir import open_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("TRAINGUARD_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "tests" / ".artifacts")
)


@pytest.fixture
def dash(scripted):
    info = serve.open_dashboard(scripted)
    state = json.loads((scripted / "runs" / ".dashboard.json").read_text())
    return info, state["token"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(method: str, port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One HTTP request with exactly these headers (a forged Host or Origin included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def status(project: Path, run_id: str) -> str:
    return open_run(project / "runs", run_id).read_state().status


def test_the_same_project_gets_the_same_dashboard_and_another_its_own(dash, tmp_path, monkeypatch):
    info, _ = dash
    again = serve.open_dashboard(Path(info.project))
    assert again.reused and again.url == info.url and again.pid == info.pid
    other = tmp_path / "other"
    other.mkdir()
    second = serve.open_dashboard(other)
    try:
        assert not second.reused and second.port != info.port
        assert request("GET", second.port, "/" + second.url.split("/", 3)[3]).status_code == 200
    finally:
        assert serve.close(other)
    assert (Path(info.project) / "runs" / ".dashboard.json").stat().st_mode & 0o077 == 0  # the token is a secret


def test_requests_without_the_token_from_another_host_or_origin_are_refused_and_change_nothing(dash, scripted):
    info, token = dash
    run_id = ok("launch_run", {"experiment": "902"})["run_id"]
    wait_until(lambda: status(scripted, run_id) == "running", what="the run to start")
    port = info.port
    stop = f"/api/runs/{run_id}/stop"
    own = {"X-Trainguard-Token": token}
    refused = [
        request("GET", port, "/api/runs"),
        request("GET", port, "/api/runs?token=wrong"),
        request("GET", port, "/api/runs", {"X-Trainguard-Token": token[:-1] + "x"}),
        request("GET", port, "/api/runs", own | {"Host": f"rebind.example:{port}"}),
        request("GET", port, f"/?token={token}", {"Host": "127.0.0.1"}),
        request("POST", port, stop),
        request("POST", port, f"{stop}?token={token}"),  # a state change takes the header only
        request("POST", port, stop, own | {"Origin": "http://evil.example"}),
        request("POST", port, stop, own | {"Origin": f"http://127.0.0.1:{port + 1}"}),
        request("POST", port, stop, own | {"Sec-Fetch-Site": "cross-site"}),
        request("PUT", port, stop, own),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert all("error" in r.json() for r in refused)
    time.sleep(0.5)
    assert status(scripted, run_id) == "running"  # nothing was stopped
    assert request("GET", port, "/api/runs", own).status_code == 200
    assert request("GET", port, f"/api/runs/{run_id}?token={token}").status_code == 200
    page = request("GET", port, f"/?token={token}")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert request("GET", port, "/api/runs/..%2Fstate", own).status_code in (400, 404)


def test_a_live_run_is_listed_its_chart_grows_and_the_stop_button_stops_it(dash, scripted, browser):
    info, _ = dash
    run_id = runs.launch("902", project=scripted).run_id  # not over MCP: Playwright's loop holds this thread
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(info.url)
    row = page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=15000)
    wait_until(lambda: "running" in row.inner_text(), timeout=15, what="the row to say running")

    page.click(f'tr[data-run="{run_id}"] a')
    page.wait_for_selector("#panels canvas[data-points]", timeout=15000)
    first = int(page.get_attribute("#panels", "data-points"))
    wait_until(lambda: int(page.get_attribute("#panels", "data-points") or 0) > first, timeout=20, what="more points")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-run-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    state = open_run(scripted / "runs", run_id).read_state()
    page.on("dialog", lambda dialog: dialog.accept())  # "Stop run ...? It saves a checkpoint"
    page.click("#stop")
    wait_until(lambda: status(scripted, run_id) == "stopped", timeout=60, what="the run to stop")
    page.wait_for_selector("#run-status:text('stopped')", timeout=10000)
    assert procs.group_members(state.pgid) == []
    assert (scripted / "runs" / run_id / "checkpoints" / "last.json").is_file()
    assert errors == []


def test_a_failed_run_shows_its_diagnosis(dash, scripted, browser):
    info, _ = dash
    run_id = runs.launch("903", project=scripted).run_id
    wait_until(lambda: status(scripted, run_id) == "failed", timeout=60, what="the run to fail")
    page = browser.new_page()
    page.goto(f"{info.url}#/run/{run_id}")
    box = page.wait_for_selector("#diagnosis", timeout=15000)
    text = box.inner_text()
    assert "Diagnosis: crash" in text and "scripted failure" in text
    assert page.query_selector("#stop") is None


def test_a_forged_state_file_gets_no_process_signalled(scripted):
    """runs/.dashboard.json is a project file: one naming another live process (its real pid and
    start time) is neither reused nor signalled."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        forged = {"url": "http://127.0.0.1:1/?token=x", "port": 1, "token": "x", "pid": other.pid}
        forged["started"] = procs.start_time(other.pid)
        (scripted / "runs").mkdir(exist_ok=True)
        (scripted / "runs" / ".dashboard.json").write_text(json.dumps(forged))
        assert serve.close(scripted) is False
        assert other.poll() is None  # not signalled
        (scripted / "runs" / ".dashboard.json").write_text(json.dumps(forged))
        info = serve.open_dashboard(scripted)
        assert not info.reused and info.pid != other.pid and other.poll() is None
    finally:
        other.kill()
        other.wait()


def finished(project: Path, run_id: str, timeout: float = 120) -> str:
    return wait_until(
        lambda: (s := status(project, run_id)) in ("succeeded", "failed", "stopped", "lost") and s,
        timeout,
        f"{run_id} to end",
    )


def test_a_ppo_run_shows_seed_004s_panel_per_mode(dash, scripted, browser):
    info, _ = dash
    config = scripted / "tiny-ppo.toml"
    config.write_text("[env]\nmax_steps = 40\n[training]\ncheckpoint_every = 100\n")
    args = {"mode": "ground_truth,proxy", "updates": 3, "n_envs": 8, "eval_episodes": 4, "device": "cpu"}
    write_experiment(scripted, "914-ppo-tiny", "ppo_gridworld", args | {"config": str(config)})
    run_id = runs.launch("914", project=scripted).run_id
    assert finished(scripted, run_id, 300) == "succeeded"
    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    page.goto(f"{info.url}#/run/{run_id}")
    page.wait_for_selector("#ppo-box:not([hidden]) .ppo-mode", timeout=15000)
    modes = page.eval_on_selector_all(".ppo-mode", "els => els.map(e => e.dataset.mode)")
    assert modes == ["ground_truth", "proxy"]
    titles = page.eval_on_selector_all(
        '.ppo-mode[data-mode="proxy"] .panel h3', "els => els.map(e => e.textContent.trim())"
    )
    assert titles == ["episode reward", "episode length", "policy and value loss", "entropy", "action distribution"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-ppo-page.png"), full_page=True)


RESUMABLE = """
resume_checkpoint = "last.json"

[params.resume]
type = "path"
flag = "--resume"
must_exist = true
help = "A last.json: go on from it."
"""


def test_the_resume_button_of_a_stopped_run_opens_the_run_that_goes_on_from_its_checkpoint(dash, scripted, browser):
    info, _ = dash
    trainers = scripted / "experiments" / "trainers"
    spec = (trainers / "scripted.toml").read_text().replace('name = "scripted"', 'name = "scripted_resume"')
    spec = spec.replace('primary_mode = "max"\n', 'primary_mode = "max"\n' + RESUMABLE, 1)
    (trainers / "scripted_resume.toml").write_text(spec)
    write_experiment(scripted, "915-resumable", "scripted_resume", {"steps": 100000, "interval": 0.05})
    run_id = runs.launch("915", project=scripted).run_id
    wait_until(lambda: (scripted / "runs" / run_id / "metrics.jsonl").is_file(), 60, "the run to log")
    runs.stop(run_id, 30.0, scripted)  # it saves checkpoints/last.json as it stops
    assert (scripted / "runs" / run_id / "checkpoints" / "last.json").is_file()
    page = browser.new_page()
    alerts = []
    page.on("dialog", lambda dialog: alerts.append(dialog.message) or dialog.dismiss())
    page.goto(f"{info.url}#/run/{run_id}")
    page.click("#resume", timeout=15000)
    page.wait_for_url(lambda url: bool(alerts) or not url.endswith(f"/{run_id}"), timeout=30000)  # Playwright's wait
    assert alerts == []
    resumed = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(f"#run-header h2:text('{resumed}')", timeout=15000)
    manifest = open_run(scripted / "runs", resumed).read_manifest()
    assert manifest.note == f"resume of {run_id} from last.json; resumed from the dashboard"
    assert manifest.overrides == {"resume": f"runs/{run_id}/checkpoints/last.json"}
    runs.stop(resumed, 30.0, scripted)


def test_the_compare_page_overlays_the_selected_runs_with_what_differs(dash, scripted, browser):
    info, _ = dash
    write_experiment(scripted, "921-short", "scripted", {"steps": 3})
    write_experiment(scripted, "922-long", "scripted", {"steps": 8})
    ids = [runs.launch(e, project=scripted).run_id for e in ("921", "922")]
    assert [finished(scripted, i) for i in ids] == ["succeeded", "succeeded"]
    page = browser.new_page()
    page.goto(info.url)
    for run_id in ids:
        page.check(f'tr[data-run="{run_id}"] input[type=checkbox]', timeout=15000)
    page.click("#compare")
    table = page.wait_for_selector("#compare-table", timeout=15000)
    assert page.query_selector("#compare-chart") is not None
    headers = page.eval_on_selector_all("#compare-table th", "els => els.map(e => e.textContent)")
    assert headers[:2] == ["run", "best"] and "steps" in headers
    shown = page.eval_on_selector_all("#compare-table tr[data-run]", "els => els.map(e => e.dataset.run)")
    assert sorted(shown) == sorted(ids)
    steps = headers.index("steps")
    cells = {
        r: page.eval_on_selector(f'#compare-table tr[data-run="{r}"]', f"e => e.children[{steps}].textContent")
        for r in ids
    }
    assert cells == {ids[0]: "3", ids[1]: "8"}
    assert "compare failed" not in table.inner_text()
