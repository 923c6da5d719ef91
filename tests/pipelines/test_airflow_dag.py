"""The exported DAG in a real Airflow 3 (``.venv-airflow``) against a real Ray cluster with token auth on.

Airflow and MLflow cannot share one environment, so Airflow runs from its own venv as a
subprocess: it imports the file (no import errors), and ``airflow dags test`` runs one DAG run,
each task submitting its step to the cluster as a Ray job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from ml_system.cluster import HeadNode, auth_headers
from ml_system.config import PlatformConfig
from ml_system.pipelines.history import list_runs
from ml_system.pipelines.storage import open_storage
from ml_system.training import tracking
from tests.pipelines.conftest import fresh_tiny
from tests.ray_head import private_head

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO / ".venv-airflow" / "bin"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (AIRFLOW_BIN / "airflow").exists(), reason="no .venv-airflow here: `bash scripts/setup_airflow.sh` makes it"
    ),
]


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[HeadNode, Path]]:
    with private_head() as started:
        yield started


def airflow_env(home: Path, dags: Path, token_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLSYS_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{AIRFLOW_BIN}{os.pathsep}{env.get('PATH', '')}"
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
    }
    return env


def export_and_test(node: HeadNode, token_path: Path, config: PlatformConfig, tmp_path: Path, slot: datetime) -> str:
    """Export the tiny pipeline's DAG, check Airflow imports it cleanly, run ``airflow dags test``; its output."""
    dags = tmp_path / "dags"
    dags.mkdir()
    export = subprocess.run(
        [sys.executable, "-m", "ml_system.cli", "pipeline", "export-airflow", "-u", "tiny", "--out", str(dags / "t.py"),
         "--ray-address", node.dashboard_url, "--schedule", "0 * * * *", "--trials", "2", "--rounds", "20",
         "--retries", "0", "--poll-s", "1", "--config", str(Path(config.home) / "mlsys.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    env = airflow_env(tmp_path / "airflow", dags, token_path)
    python = str(AIRFLOW_BIN / "python")
    bag = "from airflow.dag_processing.dagbag import DagBag; b = DagBag(); print(sorted(b.dag_ids), b.import_errors)"
    imported = subprocess.run([python, "-c", bag], capture_output=True, text=True, env=env, timeout=300)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip().splitlines()[-1] == "['mlsys_retrain_tiny'] {}"
    migrate = subprocess.run(["airflow", "db", "migrate"], capture_output=True, text=True, env=env, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    dag_test = subprocess.run(
        ["airflow", "dags", "test", "mlsys_retrain_tiny", slot.isoformat()],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    return f"exit {dag_test.returncode}\n{dag_test.stdout}{dag_test.stderr}"


def jobs_of(node: HeadNode, token_path: Path, run_id: str) -> dict[str, str]:
    """Step -> status of the Ray jobs that the DAG's tasks submitted for ``run_id``."""
    client = JobSubmissionClient(node.dashboard_url, headers=auth_headers(token_path))
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("mlsys_run_id") == run_id]
    return {j.metadata["mlsys_step"]: str(j.status.value) for j in jobs}


def last_hour() -> datetime:
    return (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)


def test_airflow_runs_the_exported_dag_step_by_step_on_the_ray_cluster(
    head: tuple[HeadNode, Path], tmp_path: Path
) -> None:
    node, token_path = head
    config = fresh_tiny(tmp_path / "mlsys")
    slot = last_hour()
    output = export_and_test(node, token_path, config, tmp_path, slot)
    assert output.startswith("exit 0"), output[-6000:]

    runs = list_runs(open_storage(config), "tiny")
    assert len(runs) == 1, [r.run_id for r in runs]
    run = runs[0]
    assert "-airflow-" in run.run_id and run.status == "succeeded", run.error
    assert run.trigger == "airflow mlsys_retrain_tiny"
    assert run.as_of == slot.isoformat()  # the DAG run's logical date is the run's as-of moment
    assert [s.status for s in run.steps] == ["succeeded"] * 7, [(s.name, s.status, s.error) for s in run.steps]
    challenger = tracking.resolve(config.mlflow, "tiny_failure", alias="challenger")
    assert challenger.version == run.model_version and challenger.tags["pipeline_run"] == run.run_id

    assert jobs_of(node, token_path, run.run_id) == {s.name: "SUCCEEDED" for s in run.steps}
    assert "step train: succeeded" in output  # the task printed the job's log


def test_a_failing_step_fails_its_task_and_its_job_and_nothing_after_it_runs(
    head: tuple[HeadNode, Path], tmp_path: Path
) -> None:
    node, token_path = head
    config = fresh_tiny(tmp_path / "mlsys", end=datetime.now(UTC) - timedelta(days=3))  # stale: validate refuses
    output = export_and_test(node, token_path, config, tmp_path, last_hour())
    assert output.startswith("exit 1"), output[-6000:]
    (run,) = list_runs(open_storage(config), "tiny")
    assert run.status == "failed" and run.step("validate").status == "failed"
    assert "DataValidationError" in run.step("validate").error
    assert [s.status for s in run.steps][2:] == ["pending"] * 5  # Airflow never ran their tasks
    assert jobs_of(node, token_path, run.run_id) == {"ingest": "SUCCEEDED", "validate": "FAILED"}
    assert "(step validate) FAILED" in output  # the task's error names the job and its end


DEADLINE_SCRIPT = """
import importlib.util, sys, types
from datetime import datetime, timezone
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
dag_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dag_file)
dag_file.SPEC["step_timeout_s"] = 3


class Sleeping(dag_file.RayJobStep):
    def entrypoint(self, run_id, as_of):
        return "sleep 600"


moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
context = {
    "dag_run": types.SimpleNamespace(run_id="manual__deadline", run_after=moment),
    "data_interval_end": moment, "logical_date": moment, "run_id": "manual__deadline",
    "ti": types.SimpleNamespace(try_number=1),
}
try:
    Sleeping(task_id="train", step="train").execute(context)
except RuntimeError as exc:
    print("task failed:", exc)
"""


def test_a_step_past_its_deadline_fails_its_task_and_its_job_is_stopped(
    head: tuple[HeadNode, Path], tmp_path: Path
) -> None:
    """The DAG file's operator, run by Airflow's Python against the cluster, with a job that outlives the step."""
    node, token_path = head
    config = fresh_tiny(tmp_path / "mlsys")
    dag_file = tmp_path / "t.py"
    export = subprocess.run(
        [sys.executable, "-m", "ml_system.cli", "pipeline", "export-airflow", "-u", "tiny", "--out", str(dag_file),
         "--ray-address", node.dashboard_url, "--poll-s", "0.5", "--config", str(Path(config.home) / "mlsys.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    env = airflow_env(tmp_path / "airflow", tmp_path, token_path)
    script = tmp_path / "deadline.py"
    script.write_text(DEADLINE_SCRIPT)
    out = subprocess.run([str(AIRFLOW_BIN / "python"), str(script), str(dag_file)], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "did not finish within 3 s" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    run_id = "20260101T000000Z-airflow-"
    client = JobSubmissionClient(node.dashboard_url, headers=auth_headers(token_path))
    jobs = [j for j in client.list_jobs() if j.entrypoint == "sleep 600"]
    assert len(jobs) == 1 and jobs[0].submission_id.startswith(run_id) and jobs[0].submission_id.endswith("train-try1")
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while client.get_job_status(jobs[0].submission_id).value != "STOPPED" and datetime.now(UTC) < deadline:
        time.sleep(0.5)
    assert client.get_job_status(jobs[0].submission_id).value == "STOPPED"
