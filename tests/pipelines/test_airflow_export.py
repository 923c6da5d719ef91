"""``mlsys pipeline export-airflow``: what the DAG file holds, what is refused, and the step selection it uses."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from ml_system.errors import PipelineError
from ml_system.pipelines.airflow_export import AirflowExport, dag_spec, write_dag
from ml_system.pipelines.history import load
from ml_system.pipelines.runner import RunParams, run_pipeline
from ml_system.pipelines.storage import open_storage
from tests.pipelines.conftest import PARAMS, TinyRun, copy_home, tiny, tiny_config

REPO = Path(__file__).resolve().parents[2]
HOURLY = {"name": "tiny-hourly", "usecase": "tiny", "cron": "15 * * * *", "action": "retrain", "trials": 3}


def export_cli(*args: str, config: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "MLSYS_CONFIG": str(config), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "ml_system.cli", "pipeline", "export-airflow", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


def spec_of(path: Path) -> dict:
    """The SPEC literal of a written DAG file, read without importing Airflow."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "SPEC":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no SPEC")


def test_the_dag_has_a_task_per_step_with_the_pipelines_edges_and_the_configured_cron(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "home", schedules=[HOURLY])
    out = export_cli("-u", "tiny", "--out", str(tmp_path / "dag.py"), "--ray-address", "http://10.0.0.5:8265",
                     "--env", "EXTRA=1", config=Path(config.home) / "mlsys.yaml")  # fmt: skip
    assert out.returncode == 0, out.stderr
    spec = spec_of(tmp_path / "dag.py")
    steps = ["ingest", "validate", "build_training_set", "train", "evaluate", "register", "start_canary"]
    assert spec["steps"] == steps
    assert spec["upstream"]["train"] == ["build_training_set"]
    assert spec["upstream"]["register"] == ["ingest", "build_training_set", "train", "evaluate"]
    assert (spec["schedule"], spec["catchup"], spec["trials"]) == ("15 * * * *", False, 3)
    assert spec["ray_address"] == "http://10.0.0.5:8265" and spec["working_dir"] == str(REPO)
    assert spec["env"] == {"EXTRA": "1", "MLSYS_CONFIG": str(Path(config.home) / "mlsys.yaml")}
    assert "dag mlsys_retrain_tiny" in out.stdout.lower() and "15 * * * *" in out.stdout


def test_an_explicit_schedule_wins_and_none_means_manual_runs_only(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "home", schedules=[HOURLY])
    base = {"usecase": "tiny", "ray_address": "http://head:8265", "working_dir": str(REPO)}
    assert dag_spec(config, AirflowExport(**base, schedule="0 3 * * 1"))["schedule"] == "0 3 * * 1"
    assert dag_spec(config, AirflowExport(**base, schedule="none"))["schedule"] is None
    unscheduled = tiny_config(tmp_path / "bare")
    assert dag_spec(unscheduled, AirflowExport(**base))["schedule"] is None


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-u", "nosuch"], "unknown use case 'nosuch'"),
        (["-u", "tiny", "--schedule", "61 * * * *"], "schedule '61 * * * *' is not a five-field cron"),
        (["-u", "tiny", "--env", "NOEQUALS"], "--env 'NOEQUALS' is not NAME=VALUE"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_no_file(tmp_path: Path, args: list[str], reason: str) -> None:
    config = tiny_config(tmp_path / "home")
    target = tmp_path / "dag.py"
    out = export_cli(*args, "--out", str(target), config=Path(config.home) / "mlsys.yaml")
    assert out.returncode == 1
    assert reason in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not target.exists() and not list(tmp_path.glob(".dag.py*"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schedule": "0 0 * * * 30"}, "is not a five-field cron"),
        ({"ray_address": "127.0.0.1:6379"}, "is not the dashboard's job submission URL"),
        ({"working_dir": "/"}, "has no jobs/retrain.py"),
        ({"trials": 0}, "--trials 0 is out of range"),
        ({"step_timeout_s": 5}, "--step-timeout must be at least 60 s"),
    ],
)
def test_the_library_refuses_what_the_file_could_not_run(tmp_path: Path, change: dict, reason: str) -> None:
    config = tiny_config(tmp_path / "home")
    export = AirflowExport(**{"usecase": "tiny", "ray_address": "http://head:8265", "working_dir": str(REPO), **change})
    with pytest.raises(PipelineError, match=reason.replace("*", r"\*")):
        write_dag(config, export, tmp_path / "dag.py")
    assert not (tmp_path / "dag.py").exists()


def test_the_written_file_is_valid_python_that_names_no_secret(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "home")
    export = AirflowExport("tiny", "http://head:8265/", str(REPO))
    path, spec = write_dag(config, export, tmp_path / "dag.py")
    text = path.read_text()
    compile(text, str(path), "exec")
    assert spec["ray_address"] == "http://head:8265" and spec["dag_id"] == "mlsys_retrain_tiny"
    assert "auth_token" in text and "RAY_AUTH_TOKEN" in text  # read at run time, never written in
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_steps_run_one_call_at_a_time_share_one_run_record(ray_cluster: str, tiny_run: TinyRun, tmp_path: Path) -> None:
    """What each Airflow task does: run one step of a run id, reading the earlier steps' recorded outputs."""
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    usecase = tiny(config)
    run_id = "20261207T020000Z-airflow-abc123-tiny"
    with pytest.raises(PipelineError, match="reads the outputs of step 'build_training_set', which is pending"):
        run_pipeline(config, usecase, params=PARAMS, run_id=run_id, only=["train"])
    for name in ("ingest", "validate", "build_training_set", "train"):
        record = run_pipeline(config, usecase, params=PARAMS, run_id=run_id, only=[name])
        assert record.step(name).status in ("succeeded", "cached"), record.step(name).error
        assert record.status == "running" and not record.finished
    record = load(open_storage(config), run_id)
    assert [s.status for s in record.steps][4:] == ["pending"] * 3
    assert record.step("train").status == "cached"  # the same inputs as the session's first run
    with pytest.raises(PipelineError, match="was started with use case tiny, as of None"):
        run_pipeline(config, usecase, params=RunParams(trials=3, rounds=20), run_id=run_id, only=["evaluate"])
    record = run_pipeline(config, usecase, params=PARAMS, run_id=run_id, only=["evaluate", "register", "start_canary"])
    assert record.status == "succeeded" and record.finished and record.attempts == 1
    assert record.model_version == tiny_run.first.model_version  # register found the cached version
    # a task retried: the step runs again, its downstream steps wait for their own tasks again
    again = run_pipeline(config, usecase, params=PARAMS, run_id=run_id, only=["evaluate"])
    assert again.attempts == 2 and again.status == "running"
    assert again.step("register").status == "pending" and again.step("train").status == "cached"
    assert ray.is_initialized()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--steps", "train"], "--steps needs --run-id"),
        (["--run-id", "../escape", "--steps", "train"], "may hold only letters, digits"),
    ],
)
def test_the_job_refuses_a_step_selection_it_cannot_place(tmp_path: Path, args: list[str], reason: str) -> None:
    out = subprocess.run(
        [sys.executable, "jobs/retrain.py", "--usecase", "tiny", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MLSYS_HOME": str(tmp_path), "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert out.returncode == 2 and reason in out.stderr, out.stderr
