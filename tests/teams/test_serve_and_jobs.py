"""Serve replicas and job drivers count against their team's quota, and give it back when they end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from ml_system.config import ServingConfig
from ml_system.errors import AdmissionError
from ml_system.serving.team_apps import deploy_for_team
from ml_system.teams.jobs import LEASE_ENV, job_spec
from ml_system.teams.resources import Resources
from ml_system.teams.work import TEAM_ENV

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, num_replicas=2)
class Echo:
    async def __call__(self, request) -> str:  # type: ignore[no-untyped-def]
        return "ok"


def until(check, seconds: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s")


def test_a_team_s_serve_replicas_hold_its_quota_and_a_full_quota_deploys_nothing(admission, serve_port: int) -> None:
    client = admission()
    config = ServingConfig(port=serve_port)
    url, _ = deploy_for_team(client, "a", Echo.bind(), "echo", config, route_prefix="/team-a-echo", health_path="/")
    try:
        assert httpx.get(url + "/", timeout=10).status_code == 200
        assert "a-echo" in serve.status().applications  # the team is in the application's name
        assert client.status()["usage"]["a"]["own"]["cpu"] == pytest.approx(0.2)  # 2 replicas x 0.1 CPU
        too_big = Echo.options(num_replicas=4)  # 0.4 more CPU; only 0.3 is left of team a's 0.5
        with pytest.raises(AdmissionError, match=r"no room for application 'a-echo2'.*nothing was deployed"):
            deploy_for_team(client, "a", too_big.bind(), "echo2", config, route_prefix="/e2", wait_timeout_s=2)
        assert "a-echo2" not in serve.status().applications
        assert client.status()["usage"]["b"]["borrowed"]["cpu"] == 0  # replicas never borrow
    finally:
        serve.delete("a-echo")
    until(lambda: client.status()["usage"]["a"]["own"]["cpu"] == 0)  # deleting the app gives the quota back


def test_a_job_driver_claims_its_lease_and_gives_it_back_when_it_exits(admission, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    client = admission(state_dir=state_dir)
    lease = client.submit("b", "job", Resources(cpu=0.25), label="train.py")
    assert client.wait_granted(lease, 30) == "granted"
    spec = job_spec("b", lease, ["python", "jobs/train.py", "--trials", "2"], Resources(cpu=0.25), ".")
    assert spec["submission_id"] == f"mlsys-b-{lease.rsplit('-', 1)[-1]}"
    assert spec["metadata"] == {"mlsys.team": "b", "mlsys.lease": lease} and spec["entrypoint_num_cpus"] == 0.25
    env = spec["runtime_env"]["env_vars"]  # type: ignore[index]
    assert env == {TEAM_ENV: "b", LEASE_ENV: lease}
    client.bind(lease, {"submission": str(spec["submission_id"])})

    # what `ray job submit` runs: a driver with the job's runtime env, attaching to the cluster
    driver = textwrap.dedent(
        f"""
        import ray, sys
        from ml_system.teams.jobs import claim_job_lease
        ray.init(address="{ray.get_runtime_context().gcs_address}", log_to_driver=False)
        print("claimed", claim_job_lease("{state_dir}"), ray.get_runtime_context().get_job_id(), flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=180, cwd=REPO,
        env={**os.environ, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    claimed, job_id = out.stdout.split()[-2:]
    assert claimed == lease
    until(lambda: client.poll([lease])[lease] == "released")  # the driver's job ended: its lease with it
    assert any(g["id"] == lease for g in client.status()["grants"]) and job_id
