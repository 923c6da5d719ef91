"""``mlsys pipeline ...``, ``mlsys reproduce`` and ``jobs/retrain.py`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from tests.pipelines.conftest import TINY, TinyRun, copy_home

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(*args: str, config: Path, timeout: int = 300, attach: bool = False) -> subprocess.CompletedProcess[str]:
    # the tiny use case lives in this repository's tests package, as a team's own package would be installed
    env = {**os.environ, "COLUMNS": "200", "MLSYS_CONFIG": str(config), "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    if attach:
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def mlsys(*args: str, config: Path, attach: bool = False) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "ml_system.cli", *args, config=config, attach=attach)


def test_run_history_show_and_reproduce_from_the_command_line(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = Path(copy_home(tiny_run.config, tmp_path / "mlsys").home) / "mlsys.yaml"
    out = mlsys("pipeline", "run", "-u", "tiny", "--trials", "2", "--rounds", "20", config=config, attach=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cached" in out.stdout and "is the challenger" in out.stdout
    listed = mlsys("pipeline", "history", "-u", "tiny", config=config)
    assert listed.returncode == 0 and tiny_run.first.run_id in listed.stdout
    shown = mlsys("pipeline", "show", tiny_run.first.run_id, config=config)
    assert shown.returncode == 0 and "pipeline:tiny:train" in shown.stdout and "succeeded" in shown.stdout
    missing = mlsys("pipeline", "show", "no-such-run", config=config)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
    again = mlsys("reproduce", tiny_run.first.run_id, config=config, attach=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "identical" in again.stdout


def test_schedule_lists_the_next_slots_and_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "mlsys.yaml"
    schedule = {"name": "nightly", "usecase": "tiny", "cron": "0 2 * * *", "catchup": "all"}
    data = {"home": str(tmp_path), "usecases": {"tiny": TINY}, "pipelines": {"schedules": [schedule]}}
    config.write_text(yaml.safe_dump(data))
    out = mlsys("pipeline", "schedule", config=config)
    assert out.returncode == 0, out.stderr
    assert "nightly" in out.stdout and "02:00:00+00:00" in out.stdout
    data["pipelines"]["schedules"][0]["cron"] = "0 2 * *"
    config.write_text(yaml.safe_dump(data))
    bad = mlsys("pipeline", "schedule", config=config)
    assert bad.returncode == 1 and "cron" in bad.stderr and bad.stderr.strip().count("\n") == 0
    data["pipelines"]["schedules"][0].update(cron="0 2 * * *", usecase="nope")
    config.write_text(yaml.safe_dump(data))
    unknown = mlsys("pipeline", "schedule", config=config)
    assert unknown.returncode == 1 and "unknown use case 'nope'" in unknown.stderr


def test_the_retrain_job_runs_the_pipeline_as_ray_job_submit_does(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = Path(copy_home(tiny_run.config, tmp_path / "mlsys").home) / "mlsys.yaml"
    out = run(
        sys.executable, "jobs/retrain.py", "--usecase", "tiny", "--trials", "2", "--rounds", "20",
        config=config, attach=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "step train: cached" in out.stdout and ": succeeded" in out.stdout
