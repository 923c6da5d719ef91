"""Ray jobs of a team: admitted before ``submit_job``, labelled on the dashboard, held while the driver lives.

The job's lease covers its entrypoint (``entrypoint_num_cpus`` and friends, which Ray reserves
for the driver); the Tune trials the job starts take leases of their own (``tune_admission.py``),
so a training job counts its driver and its trials against the team's quota. Jobs never borrow:
stopping a borrowed job would lose all of it, where a trial loses a few rounds.

The dashboard's job list shows the team three ways: the submission id (``mlsys-<team>-...``),
the job metadata (``mlsys.team``) and the ``MLSYS_TEAM`` variable of its runtime env, which
every task and actor of the job inherits. The driver claims its lease when it connects
(``claim_job_lease``), from then on the lease lives exactly as long as the driver's Ray job; a job
that never starts gives its lease back after ``BIND_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from ml_system.errors import AdmissionError
from ml_system.teams.admission import AdmissionClient, current_job_id
from ml_system.teams.resources import Resources
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.teams.work import TEAM_ENV, team_runtime_env

LEASE_ENV = "MLSYS_LEASE"
TEAM_METADATA = "mlsys.team"


def submission_id(team: str, lease: str) -> str:
    return f"mlsys-{team}-{lease.rsplit('-', 1)[-1]}"


def job_spec(
    team: str, lease: str, entrypoint: Sequence[str], resources: Resources, working_dir: str | None
) -> dict[str, object]:
    """Keyword arguments of ``JobSubmissionClient.submit_job`` for a leased job of ``team``."""
    runtime_env = team_runtime_env(team, {"working_dir": working_dir} if working_dir else None)
    runtime_env["env_vars"][LEASE_ENV] = lease
    spec: dict[str, object] = {
        "entrypoint": shlex.join(entrypoint),
        "submission_id": submission_id(team, lease),
        "runtime_env": runtime_env,
        "metadata": {TEAM_METADATA: team, "mlsys.lease": lease},
        "entrypoint_num_cpus": resources.cpu,
        "entrypoint_num_gpus": resources.gpu,
    }
    if resources.memory:
        spec["entrypoint_memory"] = int(resources.memory)
    return spec


def submit_job(
    client: AdmissionClient,
    team: str,
    entrypoint: Sequence[str],
    resources: Resources,
    *,
    address: str,
    working_dir: str | None = ".",
    priority: int = 0,
    wait_timeout_s: float | None = None,
    on_queued: Callable[[str], None] | None = None,
) -> str:
    """Wait for a lease, then submit; returns the submission id. The lease is released if submission fails."""
    from ray.job_submission import JobSubmissionClient

    lease = client.submit(team, "job", resources, priority=priority, label=Path(entrypoint[-1]).name)
    if on_queued is not None:
        on_queued(lease)
    state = client.wait_granted(lease, wait_timeout_s)
    if state != "granted":
        raise AdmissionError(f"job lease {lease} of team '{team}' ended before the job started ({state})")
    spec = job_spec(team, lease, entrypoint, resources, working_dir)
    try:
        sid = JobSubmissionClient(address).submit_job(**spec)  # type: ignore[arg-type]
    except BaseException:
        client.release(lease)
        raise
    client.bind(lease, {"submission": sid})
    return str(sid)


def claim_job_lease(state_dir: str | Path) -> str | None:
    """In a job's driver: bind the job's lease to this Ray job, so it lives exactly as long as the driver."""
    lease = os.environ.get(LEASE_ENV)
    if not lease:
        return None
    state = AdmissionClient.attach(state_dir).bind(lease, {"job": current_job_id()})
    if state != "granted":
        raise AdmissionError(f"job lease {lease} is {state}: the job was admitted but its lease is gone")
    return lease


def team_admission_from_env(state_dir: str | Path) -> TrialAdmission | None:
    """Trials of a team's job run on the team's quota: the job's runtime env names the team."""
    team = os.environ.get(TEAM_ENV)
    if not team:
        return None
    return TrialAdmission(AdmissionClient.attach(state_dir), team, group=os.environ.get(LEASE_ENV, ""))
