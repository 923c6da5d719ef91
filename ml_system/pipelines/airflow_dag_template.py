"""Airflow DAG of a retraining pipeline: one task per step, each a Ray job on the cluster.

Written by ``mlsys pipeline export-airflow`` (``SPEC`` below is what it filled in); it imports
only Airflow and Ray's job submission client, so it runs in an Airflow that has no ml_system.
Each task submits ``jobs/retrain.py --run-id RUN --steps STEP`` with Ray's
``JobSubmissionClient``: every task of a DAG run works on the same pipeline run, so a step reads
what the steps before it recorded, and a retried task re-runs only its own step. The task prints
the job's log as it grows, fails when the job fails or outlives the step's deadline, and stops
the job when Airflow kills the task (``on_kill``) or times it out.

The DAG run's logical date (the end of its data interval) is the pipeline run's as-of moment,
as a slot is for ``mlsys pipeline backfill``. The tasks run one at a time (``max_active_tasks``):
they write one run record. The Ray token comes from ``RAY_AUTH_TOKEN``, the file named by
``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``, never from this file; ``MLSYS_RAY_ADDRESS``
overrides the job submission address.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator

SPEC: dict[str, Any] = {}  # filled by the exporter

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def ray_token() -> str | None:
    """The cluster's token, looked up where ``ray`` itself looks."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def pipeline_run(context: Any) -> tuple[str, str | None]:
    """The pipeline run id shared by every task of this DAG run, and the run's as-of moment."""
    dag_run = context["dag_run"]
    moment = context.get("data_interval_end") or context.get("logical_date")
    when = (moment or dag_run.run_after).astimezone(UTC)
    tag = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:6]
    run_id = f"{when:%Y%m%dT%H%M%SZ}-airflow-{tag}-{SPEC['usecase']}"
    return run_id, moment.astimezone(UTC).isoformat() if moment else None


class RayJobStep(BaseOperator):
    """One pipeline step as a Ray job, followed to its end."""

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self._client: Any = None
        self._job_id: str | None = None

    def entrypoint(self, run_id: str, as_of: str | None) -> str:
        args = ["python", "jobs/retrain.py", "--usecase", SPEC["usecase"], "--run-id", run_id, "--steps", self.step]
        args += ["--trigger", f"airflow {SPEC['dag_id']}"]
        args += ["--trials", str(SPEC["trials"]), "--seed", str(SPEC["seed"])]
        if SPEC["rounds"] is not None:
            args += ["--rounds", str(SPEC["rounds"])]
        if as_of is not None:
            args += ["--as-of", as_of]
        return shlex.join(args)

    def execute(self, context: Any) -> str:
        from ray.job_submission import JobSubmissionClient

        run_id, as_of = pipeline_run(context)
        address = os.environ.get("MLSYS_RAY_ADDRESS") or SPEC["ray_address"]
        token = ray_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        client = JobSubmissionClient(address, headers=headers)
        job_id = f"{run_id}-{self.step}-try{context['ti'].try_number}"
        runtime_env = {"working_dir": SPEC["working_dir"], "env_vars": dict(SPEC["env"])}
        try:
            client.submit_job(
                entrypoint=self.entrypoint(run_id, as_of),
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"mlsys_run_id": run_id, "mlsys_step": self.step, "airflow_run_id": context["run_id"]},
            )
            self.log.info("submitted Ray job %s to %s (pipeline run %s, as of %s)", job_id, address, run_id, as_of)
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            self.log.info("Ray job %s exists already: following it", job_id)
        self._client, self._job_id = client, job_id
        try:
            self.follow(client, job_id)
        except BaseException:
            self.stop_job("the task ended before the job")
            raise
        return run_id

    def follow(self, client: Any, job_id: str) -> None:
        """Print the job's log as it grows until the job ends; fail past the step's deadline."""
        deadline = time.monotonic() + SPEC["step_timeout_s"]
        printed = 0
        while True:
            status = str(client.get_job_status(job_id).value)
            logs = client.get_job_logs(job_id)
            for line in logs[printed:].splitlines():
                self.log.info("%s", line)
            printed = len(logs)
            if status in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray job {job_id} did not finish within {SPEC['step_timeout_s']} s")
            time.sleep(SPEC["poll_s"])
        if status != "SUCCEEDED":
            message = client.get_job_info(job_id).message or ""
            raise RuntimeError(f"Ray job {job_id} (step {self.step}) {status}: {message.strip()}")

    def on_kill(self) -> None:
        self.stop_job("Airflow killed the task")

    def stop_job(self, why: str) -> None:
        if self._client is None or self._job_id is None:
            return
        try:
            if str(self._client.get_job_status(self._job_id).value) not in TERMINAL:
                self._client.stop_job(self._job_id)
                self.log.warning("stopped Ray job %s: %s", self._job_id, why)
        except Exception as exc:  # noqa: BLE001 - the task is failing already; say why the stop did not happen
            self.log.warning("could not stop Ray job %s: %s", self._job_id, exc)


with DAG(
    dag_id=SPEC["dag_id"],
    description=f"retraining pipeline of use case {SPEC['usecase']} on the Ray cluster",
    schedule=SPEC["schedule"],
    start_date=datetime.fromisoformat(SPEC["start_date"]),
    catchup=SPEC["catchup"],
    max_active_runs=1,
    max_active_tasks=1,
    tags=["mlsys", SPEC["usecase"]],
    default_args={
        "retries": SPEC["retries"],
        "retry_delay": timedelta(seconds=60),
        "execution_timeout": timedelta(seconds=SPEC["step_timeout_s"] + 60),
    },
    doc_md=__doc__,
) as dag:
    tasks = {name: RayJobStep(task_id=name, step=name) for name in SPEC["steps"]}
    for name, upstream in SPEC["upstream"].items():
        for before in upstream:
            tasks[before] >> tasks[name]
