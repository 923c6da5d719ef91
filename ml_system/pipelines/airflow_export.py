"""Export a use case's retraining pipeline as an Airflow DAG file that submits its steps to Ray.

For teams whose jobs already live in Airflow; the on-cluster scheduler stays the default. The
file is the template ``airflow_dag_template.py`` with a ``SPEC`` literal written in: it imports
only Airflow and ``ray.job_submission``, so the Airflow installation needs neither ml_system nor
its pins (Airflow 3 and MLflow disagree on SQLAlchemy and FastAPI). One task per step, not one per
run: the runner runs a selection of steps of one run id (``jobs/retrain.py --steps``), taking the
other steps' outputs from the run's record, so a retried task repeats one step and the Airflow
grid shows where a run stopped. Everything the file would need is checked here, before it is
written: the use case, the cron, the address, the working directory.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml_system.config import PlatformConfig
from ml_system.errors import PipelineError
from ml_system.pipelines.dag import pipeline_for
from ml_system.usecase import load_usecase

TEMPLATE = Path(__file__).with_name("airflow_dag_template.py")
PLACEHOLDER = "SPEC: dict[str, Any] = {}  # filled by the exporter\n"
REMOTE_WORKING_DIR = re.compile(r"^(s3|gs|https?)://")


@dataclass(frozen=True)
class AirflowExport:
    usecase: str | None
    """None: the default use case."""
    ray_address: str
    working_dir: str
    """A local folder holding ``jobs/retrain.py`` (uploaded with each job) or a remote zip URI."""
    schedule: str | None = None
    """Five-field cron; None means the use case's first retrain schedule in the config, "none" none."""
    trials: int | None = None
    rounds: int | None = None
    seed: int = 7
    catchup: bool = False
    step_timeout_s: int = 4 * 3600
    poll_s: float = 5.0
    retries: int = 1
    env: dict[str, str] = field(default_factory=dict)
    """Environment of every job (``MLSYS_CONFIG``, ``MLSYS_HOME``...)."""


def _cron(expression: str) -> str:
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise PipelineError(f"schedule '{expression}' is not a five-field cron expression (e.g. '0 2 * * *')")
    return expression


def _address(address: str) -> str:
    if not re.match(r"^https?://[^/\s]+", address):
        raise PipelineError(
            f"Ray address '{address}' is not the dashboard's job submission URL (e.g. http://head:8265)"
        )
    return address.rstrip("/")


def _working_dir(path: str) -> str:
    if REMOTE_WORKING_DIR.match(path):
        return path
    folder = Path(path).expanduser().resolve()
    if not (folder / "jobs" / "retrain.py").is_file():
        raise PipelineError(f"working directory {folder} has no jobs/retrain.py (pass the project's folder)")
    return str(folder)


def dag_spec(config: PlatformConfig, export: AirflowExport) -> dict[str, Any]:
    """What the DAG file needs, checked: a bad use case, cron, address or folder is refused here."""
    usecase = load_usecase(export.usecase, config.usecases)
    pipeline = pipeline_for(usecase)
    retrains = [s for s in config.pipelines.schedules if s.usecase == usecase.name and s.action == "retrain"]
    configured = retrains[0] if retrains else None
    if export.schedule is None:
        schedule = _cron(configured.cron) if configured else None
    elif export.schedule.lower() == "none":
        schedule = None
    else:
        schedule = _cron(export.schedule)
    for name, value in (("trials", export.trials), ("rounds", export.rounds), ("retries", export.retries)):
        if value is not None and value < (0 if name == "retries" else 1):
            raise PipelineError(f"--{name} {value} is out of range")
    if export.step_timeout_s < 60 or export.poll_s <= 0:
        raise PipelineError("--step-timeout must be at least 60 s and the poll interval above 0 s")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "dag_id": "mlsys_retrain_" + re.sub(r"[^A-Za-z0-9_]", "_", usecase.name),
        "usecase": usecase.name,
        "steps": pipeline.names,
        "upstream": {s.name: pipeline.upstream(s) for s in pipeline.steps},
        "schedule": schedule,
        "catchup": export.catchup,
        "start_date": today.isoformat(),
        "ray_address": _address(export.ray_address),
        "working_dir": _working_dir(export.working_dir),
        "env": dict(sorted(export.env.items())),
        "trials": export.trials or (configured.trials if configured else 8),
        "rounds": export.rounds if export.rounds is not None else (configured.rounds if configured else None),
        "seed": export.seed,
        "step_timeout_s": export.step_timeout_s,
        "poll_s": export.poll_s,
        "retries": export.retries,
    }


def render_dag(spec: dict[str, Any]) -> str:
    source = TEMPLATE.read_text()
    if PLACEHOLDER not in source:
        raise PipelineError(f"{TEMPLATE} has lost its SPEC line; reinstall ml_system")
    text = source.replace(PLACEHOLDER, f"SPEC: dict[str, Any] = {spec!r}\n", 1)
    compile(text, "<airflow dag>", "exec")  # a spec that breaks the file is ours to find, not Airflow's
    return text


def write_dag(config: PlatformConfig, export: AirflowExport, out: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the DAG file whole (a temporary file renamed over ``out``, by default ``<dag id>.py`` here);
    return where, and its spec."""
    spec = dag_spec(config, export)
    text = render_dag(spec)
    out = (out or Path(f"{spec['dag_id']}.py")).expanduser()
    if not out.parent.is_dir():
        raise PipelineError(f"cannot write {out}: folder {out.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out, spec
