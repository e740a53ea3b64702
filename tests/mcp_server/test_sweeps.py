"""Sweeps through the real stdio client: real driver processes, real TRM trials on the CPU,
Optuna's samplers and pruners, a driver killed and taken over; and the sweep spec's checks."""

import json
import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import call_ok as ok
from conftest import launcher_params, wait_until, write_experiment
from mcp_server import procs
from mcp_server.errors import InvalidInput, NotFound
from mcp_server.rundir import open_run
from mcp_server.sweeps import api, folder
from mcp_server.sweeps.spec import resolve

TINY = {"num_train": 300, "num_test": 60, "epochs": 2, "patience": 3, "device": "cpu"}


async def until_done(client, sweep_id, timeout=300.0, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await ok(client, "sweep_status", {"sweep_id": sweep_id})
        if st["status"] in ("finished", "stopped", "failed"):
            return st
        await anyio.sleep(every)
    raise AssertionError(f"sweep {sweep_id} did not end: {st}")


def run_states(project: Path, sweep_id: str) -> dict[int, tuple[dict, dict]]:
    """trial -> (manifest, state) of every run the sweep launched."""
    found = {}
    for path in (project / "runs").iterdir():
        manifest_file = path / "manifest.json"
        if manifest_file.is_file():
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("sweep_id") == sweep_id:
                found[manifest["trial"]] = (manifest, json.loads((path / "state.json").read_text()))
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_grid_sweep_of_experiment_001_runs_every_point_in_order_and_its_table_matches_each_history(project):
    """Seed 001's grid, tiny: every trial is a run of experiment 001, at most `parallel` train at
    once, a point that fails pre-flight (device mps on Linux) is recorded and skipped, and each
    row's best is its run's own history.json."""

    async def scenario():
        async with Client(launcher_params(project)) as client:
            launched = await ok(
                client,
                "launch_sweep",
                {
                    "experiment": "1",
                    "space": {"dim": [16, 24], "device": ["cpu", "mps"], "depth": [1, 2]},
                    "overrides": {k: v for k, v in TINY.items() if k != "device"},
                    "parallel": 2,
                    "prune": "none",
                    "note": "grid test",
                },
            )
            assert launched["settings"]["strategy"] == "grid" and launched["grid_points"] == 8
            final = await until_done(client, launched["sweep_id"])
            listed = await ok(client, "list_runs", {"limit": 20})
            promoted = await ok(client, "promote_sweep", {"sweep_id": launched["sweep_id"], "dry_run": True})
            return launched, final, listed, promoted

    launched, final, listed, promoted = anyio.run(scenario)
    sweep_id = launched["sweep_id"]
    assert final["status"] == "finished", final
    assert final["counts"] == {"complete": 4, "skipped": 4}, final["counts"]
    skipped = [row for row in final["table"] if row["status"] == "skipped"]
    assert {row["params"]["device"] for row in skipped} == {"mps"}
    assert all("pre-flight failed" in row["reason"] and "device" in row["reason"] for row in skipped)

    trials = run_states(project, sweep_id)
    assert sorted(trials) == [0, 1, 4, 5]  # nested-loop order: dim, then device, then depth; mps ones never ran
    expected = [(16, 1), (16, 2), (24, 1), (24, 2)]
    assert [(trials[t][0]["config"]["dim"], trials[t][0]["config"]["depth"]) for t in sorted(trials)] == expected
    intervals = [(s["started_at"], s["finished_at"]) for _, s in trials.values()]
    assert max_overlap(intervals) <= 2
    rows = {row["trial"]: row for row in final["table"]}
    for number, (manifest, state) in trials.items():
        assert state["status"] == "succeeded" and manifest["experiment"] == "001-trm-fast-dev"
        history = json.loads((project / "runs" / manifest["run_id"] / "checkpoints" / "history.json").read_text())
        best = max(history["val_acc"])
        assert rows[number]["best"] == pytest.approx(best, abs=1e-6)
        assert rows[number]["at"] == f"epoch {history['val_acc'].index(best) + 1}"
        assert rows[number]["run_id"] == manifest["run_id"]
    complete = [row for row in final["table"] if row["status"] == "complete"]
    assert [row["best"] for row in complete] == sorted((row["best"] for row in complete), reverse=True)
    assert final["best"]["trial"] == complete[0]["trial"]
    assert final["best_config"]["dim"] == complete[0]["params"]["dim"] and final["best_config"]["epochs"] == 2
    assert final["trials_left"] == 0 and final["driver_alive"] is False

    ours = [r for r in listed["runs"] if r.get("sweep_id") == sweep_id]
    assert sorted(r["trial"] for r in ours) == [0, 1, 4, 5]
    ledger = (project / "runs" / "results.md").read_text()  # a bundled experiment's rows
    assert sum(f"sweep {sweep_id} trial" in line for line in ledger.splitlines()) == 4
    assert promoted["launched"][0]["trial"] == final["best"]["trial"] and promoted["dry_run"] is True
    assert promoted["launched"][0]["overrides"]["dim"] == final["best"]["params"]["dim"]
    pad = next((project / ".claude" / "scratchpad" / "training-runner").glob("*.md")).read_text()
    assert f"sweep {sweep_id} finished: 8 trials (4 complete, 4 skipped)" in pad


def test_random_and_tpe_sweeps_sample_inside_their_ranges(project):
    write_experiment(project, "921-trm-tiny", "trm_nav", TINY)
    space = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "dim": {"choices": [16, 24]}}

    async def scenario():
        async with Client(launcher_params(project)) as client:
            out = []
            for strategy in ("random", "tpe"):
                launched = await ok(
                    client,
                    "launch_sweep",
                    # About sampling: no pruner, which could stop a trial (pruning is tested below).
                    {
                        "experiment": "921",
                        "space": space,
                        "strategy": strategy,
                        "max_trials": 3,
                        "parallel": 2,
                        "prune": "none",
                    },
                )
                out.append(await until_done(client, launched["sweep_id"]))
            return out

    for final in anyio.run(scenario):
        assert final["status"] == "finished" and final["counts"] == {"complete": 3}, final
        assert final["settings"]["strategy"] in ("random", "tpe") and final["settings"]["prune"] == "none"
        lrs = [row["params"]["lr"] for row in final["table"]]
        assert all(1e-3 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 3
        assert all(row["params"]["dim"] in (16, 24) for row in final["table"])


def test_a_clearly_worse_trial_is_pruned_while_running_with_its_evidence_and_checkpoint(project):
    """lr 3e-3 learns; lr 1e-7 stays where it started. Once the first has completed, the median
    pruner stops the second mid-run: status pruned, the numbers that decided it, a checkpoint,
    and no process of it left."""
    args = {"num_train": 1500, "num_test": 200, "dim": 32, "depth": 1, "epochs": 40, "patience": 0, "device": "cpu"}
    write_experiment(project, "922-trm-prune", "trm_nav", args)

    async def scenario():
        async with Client(launcher_params(project)) as client:
            launched = await ok(
                client,
                "launch_sweep",
                {
                    "experiment": "922",
                    "space": {"lr": [3e-3, 1e-7]},
                    "parallel": 1,
                    "prune": {"kind": "median", "startup_trials": 1, "warmup_epochs": 2},
                },
            )
            return await until_done(client, launched["sweep_id"], timeout=400)

    final = anyio.run(scenario)
    rows = {row["params"]["lr"]: row for row in final["table"]}
    assert rows[3e-3]["status"] == "complete", final
    pruned = rows[1e-7]
    assert pruned["status"] == "pruned", final
    assert 2 <= pruned["pruned_at"] < 40
    assert "median of 1 completed trials at epoch" in pruned["reason"] and "val/acc" in pruned["reason"]
    run = open_run(project / "runs", pruned["run_id"])
    state = run.read_state()
    assert state.status == "pruned" and "pruned by sweep" in state.stopped_because
    assert (run.checkpoints / "last.pt").is_file()
    assert procs.RunProcesses(run.run_id, state.pid, state.pid_started, str(run.path)).members() == []
    assert final["counts"] == {"complete": 1, "pruned": 1}


def test_a_sweep_whose_server_and_driver_were_killed_finishes_under_the_next_server(project):
    args = {"num_train": 600, "num_test": 60, "depth": 1, "epochs": 4, "patience": 0, "device": "cpu"}
    write_experiment(project, "923-trm-restart", "trm_nav", args)

    async def first_session():
        async with Client(launcher_params(project)) as client:
            launched = await ok(
                client,
                "launch_sweep",
                {"experiment": "923", "space": {"dim": [16, 24, 32]}, "parallel": 1, "prune": "none"},
            )
            sweep_id = launched["sweep_id"]
            while True:  # the first trial trains
                st = await ok(client, "sweep_status", {"sweep_id": sweep_id})
                if any(row["status"] == "running" for row in st["table"]):
                    return sweep_id
                await anyio.sleep(0.2)

    sweep_id = anyio.run(first_session)  # leaving the block ends that server
    sweep = folder.SweepDir(project / "runs" / "sweeps" / sweep_id)
    state = sweep.read_state()
    assert procs.is_alive(state.driver_pid, state.driver_started)
    os.kill(state.driver_pid, signal.SIGKILL)  # the driver dies too, as in a reboot
    wait_until(lambda: not sweep.driver_alive(), what="the driver's lock to be released")
    running = next(row for row in state.trials if row.status == "running")

    async def second_session():
        async with Client(launcher_params(project)) as client:
            return await until_done(client, sweep_id)

    final = anyio.run(second_session)
    assert final["status"] == "finished" and final["counts"] == {"complete": 3}, final
    assert final["restarts"] == 1
    trials = run_states(project, sweep_id)
    assert sorted(trials) == [0, 1, 2]  # the trial that ran across the restart was taken over, not launched again
    assert trials[running.number][0]["run_id"] == running.run_id
    assert all(s["status"] == "succeeded" for _, s in trials.values())


def test_stop_sweep_stops_its_running_trial_and_launches_no_more(project):
    write_experiment(project, "924-trm-long", "trm_nav", TINY | {"epochs": 10000, "patience": 10000})

    async def scenario():
        async with Client(launcher_params(project)) as client:
            launched = await ok(
                client, "launch_sweep", {"experiment": "924", "space": {"dim": [16, 24]}, "parallel": 1}
            )
            sweep_id = launched["sweep_id"]
            while True:  # its first epoch is done (the trainer checkpoints on a stop from then on)
                table = (await ok(client, "sweep_status", {"sweep_id": sweep_id}))["table"]
                if any(r["status"] == "running" and r.get("best") is not None for r in table):
                    break
                await anyio.sleep(0.2)
            stopped = await ok(client, "stop_sweep", {"sweep_id": sweep_id})
            again = await ok(client, "stop_sweep", {"sweep_id": sweep_id})
            return stopped, again, await ok(client, "sweep_status", {"sweep_id": sweep_id})

    stopped, again, final = anyio.run(scenario)
    assert stopped["status"] == "stopped" and stopped["processes_left"] == 0 and stopped["trials_stopped"] == 1
    assert "already ended" in again["message"]
    # the second trial was asked for (its pre-flight ran while the first trained) and never launched
    assert final["counts"] == {"stopped": 2} and final["trials_left"] == 0
    assert [row["run_id"] is not None for row in final["table"]] == [True, False]
    assert sorted(run_states(project, final["sweep_id"])) == [0]
    run = open_run(project / "runs", final["table"][0]["run_id"])
    assert run.read_state().status == "stopped" and (run.checkpoints / "last.pt").is_file()


# ---------------------------------------------------------------------------- the spec's checks


def _resolve(project, raw, experiment="911"):
    return resolve(experiment, raw, project, sweep_id="911-sweep-20260101-000000", created_at="now", agent="a", note="")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"space": {"width": [1, 2]}}, "does not take; its parameters"),
        ({"space": {"dim": {"low": 16, "high": 64}}, "strategy": "grid"}, "a grid needs lists"),
        ({"space": {"lr": {"low": 0, "high": 1e-2, "log": True}}}, "log range needs low > 0"),
        ({"space": {"lr": {"low": 1e-2, "high": 1e-3}}}, "must be below high"),
        ({"space": {"dim": [16, 4]}}, "parameter 'dim' is 4"),
        ({"space": {"dim": [16, 16]}}, "lists a value twice"),
        ({"space": {"dim": [16, 24]}, "overrides": {"dim": 8}}, "both swept (space) and fixed"),
        ({"space": {"dim": [16, 24]}, "acknowledge": ["no-such-rule"]}, "unknown danger rules"),
        ({"space": {"device": {"low": 1, "high": 2}}}, "is a range, but 'device' takes str"),
        ({"space": {"resume": ["a.pt"]}}, "not a hyperparameter"),
        ({"space": {"dim": list(range(8, 40)), "depth": list(range(1, 33))}}, "the grid has 1024 points"),
        ({"space": {"dim": [16]}, "metric": "train/loss"}, "direction 'max' or 'min'"),
        ({"space": {"dim": [16]}, "prune": "sometimes"}, "prune is none, median or asha"),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_starts_with_the_fix(tiny_trm, raw, needle):
    with pytest.raises((InvalidInput, NotFound)) as exc:
        _resolve(tiny_trm, raw)
    assert needle in str(exc.value)
    assert not (tiny_trm / "runs" / "sweeps").exists()


def test_sweep_toml_gives_the_defaults_and_arguments_override_its_keys(tiny_trm):
    exp = tiny_trm / "experiments" / "911-trm-tiny"
    (exp / "sweep.toml").write_text(
        'strategy = "random"\nmax_trials = 7\nprune = { kind = "asha", reduction_factor = 2 }\n'
        "[overrides]\nepochs = 2\n[space]\nlr = { low = 1e-4, high = 1e-2, log = true }\n"
    )
    spec = _resolve(tiny_trm, {})
    assert (spec.strategy, spec.max_trials, spec.prune.kind, spec.prune.reduction_factor) == ("random", 7, "asha", 2)
    assert spec.overrides == {"epochs": 2} and spec.metric == "val/acc" and spec.direction == "max"
    spec = _resolve(tiny_trm, {"space": {"dim": ["16", "24"]}, "max_trials": 9})
    assert spec.strategy == "random" and spec.space == {"dim": [16, 24]} and spec.max_trials == 9
    (exp / "sweep.toml").unlink()
    spec = _resolve(tiny_trm, {"space": {"dim": [16, 24], "depth": [1, 2]}})
    assert spec.strategy == "grid" and spec.max_trials == 4
    assert spec.grid == [
        {"dim": 16, "depth": 1},
        {"dim": 16, "depth": 2},
        {"dim": 24, "depth": 1},
        {"dim": 24, "depth": 2},
    ]
    with pytest.raises(NotFound, match="has no sweep.toml and no space"):
        _resolve(tiny_trm, {})


def test_the_bundled_sweeps_resolve(project):
    grid = _resolve(project, {}, "1")
    assert grid.strategy == "grid" and grid.max_trials == 27 and grid.grid[0] == {"dim": 64, "depth": 2, "dropout": 0.1}
    quick = _resolve(project, {}, "9")
    assert quick.strategy == "tpe" and quick.prune.kind == "median" and quick.max_trials == 8


@pytest.mark.parametrize("sweep_id", ["../runs", "001-sweep-x", "001-sweep-20260101-000000/../../etc", ""])
def test_a_sweep_id_that_is_not_one_is_refused(project, sweep_id):
    with pytest.raises(InvalidInput, match="not a sweep id"):
        api.sweep_status(sweep_id, project=project)


def test_a_sweep_folder_that_is_a_link_is_refused(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sweep.json").write_text("{}")
    root = project / "runs" / "sweeps"
    root.mkdir(parents=True)
    (root / "001-sweep-20260101-000000").symlink_to(elsewhere)
    with pytest.raises(InvalidInput, match="link"):
        api.sweep_status("001-sweep-20260101-000000", project=project)
    with pytest.raises(NotFound, match="no sweep yet"):
        api.sweep_status(project=project)  # a link is no sweep to list either


def test_a_trial_at_its_budget_is_stopped_and_counts_with_its_best_so_far(project):
    write_experiment(project, "925-trm-budget", "trm_nav", TINY | {"epochs": 10000, "patience": 10000})

    async def scenario():
        async with Client(launcher_params(project)) as client:
            launched = await ok(
                client,
                "launch_sweep",
                # 15 s: under load (CI's 2 cores, the next trial's pre-flight warming beside it) a
                # trainer's start and first epoch took 6 s, and a trial without an epoch has no best
                {"experiment": "925", "space": {"dim": [16, 24]}, "parallel": 1, "trial_budget_s": 15, "prune": "none"},
            )
            return await until_done(client, launched["sweep_id"])

    final = anyio.run(scenario)
    assert final["status"] == "finished" and final["counts"] == {"complete": 2}, final
    for row in final["table"]:
        assert row["best"] is not None and "trial budget of 15 s reached" in row["reason"]
        run = open_run(project / "runs", row["run_id"])
        state = run.read_state()
        assert state.status == "stopped" and "trial budget" in state.stopped_because
        assert 15 <= state.finished_at - state.started_at < 50
        assert (run.checkpoints / "last.pt").is_file()


def test_a_journal_that_is_a_link_is_refused_before_optuna_writes_through_it(tiny_trm, tmp_path):
    from mcp_server.errors import TrainguardError
    from mcp_server.sweeps import driver

    sweep = folder.create(tiny_trm / "runs", "911-sweep-20261202-120000")
    spec = _resolve(tiny_trm, {"space": {"dim": [16, 24]}})
    target = tmp_path / "elsewhere.journal"
    target.write_text("")
    sweep.journal.symlink_to(target)
    with pytest.raises(TrainguardError, match="does not write through links"):
        driver.open_study(sweep, spec)
    assert target.read_text() == ""
