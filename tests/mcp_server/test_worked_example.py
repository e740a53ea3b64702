"""Seed 000's whole /train skill as a user project (experiments/examples/gaussian-decoder), driven
end to end through the plugin's stdio server: its own venv, its own script, the AMD env, the
known-good table, the danger rules as golden cases, the memory estimate and a real run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from conftest import REPO, make_venv, server_env

EXAMPLE = REPO / "experiments" / "examples" / "gaussian-decoder"
LAUNCHER = REPO / "bin" / "trainguard-mcp"
ACTIVE = ("starting", "running")
SMALL = {"epochs": 2, "image_size": 32, "num_gaussians": 16, "batch_size": 4, "device": "cpu"}


@pytest.fixture
def example_project(project: Path) -> Path:
    shutil.copytree(EXAMPLE, project, dirs_exist_ok=True)
    make_venv(project / ".venv")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "trainers" / "prepare_images.py"),
            "--output-dir",
            str(project / "images" / "training_diverse"),
            "--image-size",
            "32",
            "--crops-per-image",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    return project


def connect(project: Path) -> Client:
    env = server_env(project) | {"TRAINGUARD_SERVER_PYTHON": sys.executable}
    env.pop("TRAINGUARD_PYTHON")  # the experiments name their own interpreter: .venv/bin/python
    return Client(StdioServerParameters(command=str(LAUNCHER), args=[], env=env, cwd="/"))


async def ok(client, name, args):
    result = await client.call_tool(name, args)
    assert not result.is_error, result.content[0].text
    return result.structured_content


def checks(report):
    return {c["name"]: c for c in report["checks"]}


def test_seed_000_project_through_stdio(example_project):
    project = example_project

    async def scenario():
        async with connect(project) as client:
            # Pre-flight of experiment 2 as written: the venv, real data that decodes, the table kept.
            report = await ok(client, "preflight", {"experiment": 2})
            got = checks(report)
            assert report["python"] == str(project / ".venv" / "bin" / "python")
            assert got["interpreter"]["verdict"] == "pass" and "of the venv" in got["interpreter"]["detail"]
            data = got["data:data_dir"]
            assert data["verdict"] == "pass" and "decodes: PNG 32x32 RGB" in data["detail"]
            assert got["known-good"]["verdict"] == "pass" and report["danger_fired"] == []
            assert got["memory"]["verdict"] == "pass" and "batch_size=4" in got["memory"]["detail"]
            assert report["verdict"] != "fail", report["summary"]

            # Seed 000's dangerous flags, as golden cases: each fires by its id, with the table's reason.
            bad = await ok(client, "preflight", {"experiment": 2, "overrides": {"renderer": "wavefield", "lr": 1e-4}})
            assert bad["danger_fired"] == ["wavefield-renderer", "lr-unstable"]
            known = checks(bad)["known-good"]
            assert known["verdict"] == "warn" and "7x lower prevents instability" in known["detail"]
            blending = await ok(
                client, "preflight", {"experiment": 2, "overrides": {"experiment": 4, "use_phase_blending": True}}
            )
            assert {"phase-blending-experiment-4", "experiment-4"} <= set(blending["danger_fired"])
            (project / "images" / "synthetic_v2").mkdir()
            synthetic = await ok(
                client, "preflight", {"experiment": 2, "overrides": {"data_dir": "images/synthetic_v2"}}
            )
            rule = checks(synthetic)["danger:synthetic-data"]
            assert rule["verdict"] == "fail" and "garbage in, garbage out" in rule["detail"]
            strong = await ok(client, "preflight", {"experiment": 3, "overrides": {"phase_retrieval_weight": 0.1}})
            assert strong["danger_fired"] == ["phase-retrieval-too-strong"]

            # Seed 000's hardware table, computed: the dense renderers need more than the tile one.
            tile = await ok(client, "estimate_memory", {"experiment": 2, "overrides": {"image_size": 256}})
            wave = await ok(
                client, "estimate_memory", {"experiment": 2, "overrides": {"image_size": 256, "renderer": "wavefield"}}
            )
            assert tile["method"] == "fake" and 4 in [row["batch_size"] for row in tile["table"]]
            assert wave["tensor_bytes"] > 1.5 * tile["tensor_bytes"]

            # A dangerous launch is refused until acknowledged; the dry run shows the exact command.
            wavefield = SMALL | {"renderer": "wavefield"}
            refused = await client.call_tool("launch_run", {"experiment": 2, "overrides": wavefield})
            assert refused.is_error and "acknowledge=['wavefield-renderer']" in refused.content[0].text
            dry = await ok(
                client,
                "launch_run",
                {
                    "experiment": 2,
                    "overrides": SMALL | {"renderer": "wavefield"},
                    "acknowledge": ["wavefield-renderer"],
                    "dry_run": True,
                },
            )
            assert dry["argv"][0] == str(project / ".venv" / "bin" / "python")
            assert dry["argv"][1] == str(project / "scripts" / "training" / "train_gaussian_decoder.py")
            assert ["--renderer", "wavefield"] == dry["argv"][dry["argv"].index("--renderer") :][:2]
            assert dry["env"]["HSA_OVERRIDE_GFX_VERSION"] == "11.0.0"

            # A real run of the user's script, through its venv, to the end.
            launched = await ok(client, "launch_run", {"experiment": 2, "overrides": SMALL, "note": "worked example"})
            run_id = launched["run_id"]
            with anyio.fail_after(240):
                while (status := await ok(client, "run_status", {"run_id": run_id}))["status"] in ACTIVE:
                    await anyio.sleep(0.3)
            assert status["status"] == "succeeded", status
            summary = await ok(client, "summarize_run", {"run_id": run_id})
            names = {m["name"]: m for m in [summary["summary"]["primary"], *summary["summary"]["metrics"]]}
            assert names["val/psnr_db"]["count"] == 2 and names["val/psnr_db"]["best"]["value"] > 5
            return run_id

    run_id = anyio.run(scenario)
    run_dir = project / "runs" / run_id
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["argv"][0] == str(project / ".venv" / "bin" / "python")
    assert manifest["env"]["HSA_OVERRIDE_GFX_VERSION"] == "11.0.0"
    assert {"best.pt", "last.pt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
