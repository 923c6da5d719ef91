"""The admission actor on a real cluster: it enforces grants with placement groups, survives restarts,
and gives back what dead drivers held."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

from ml_system.errors import TeamError
from ml_system.teams.admission import AdmissionClient
from ml_system.teams.groups import parse_groups
from ml_system.teams.resources import Resources
from ml_system.teams.work import TeamSession
from tests.teams.conftest import HALVES

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


@ray.remote
def sleep_then_report(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ.get("MLSYS_TEAM", "")


def wait_until(check, seconds: float = 60, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {seconds} s")


def test_a_restarted_queue_remembers_admitted_and_waiting_work(admission, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    client = admission(state_dir=state_dir)
    team = TeamSession(client, "a")
    running = team.submit(sleep_then_report, 4.0, resources=Resources(cpu=0.5), label="long")
    wait_until(lambda: client.status()["usage"]["a"]["own"]["cpu"] == 0.5)
    lease = client.submit("a", "task", Resources(cpu=0.5), label="queued")  # b is busy too: no lending
    hold_b = TeamSession(client, "b").submit(sleep_then_report, 4.0, resources=Resources(cpu=0.5), label="b")
    wait_until(lambda: client.status()["usage"]["b"]["own"]["cpu"] == 0.5)
    before = client.status()

    ray.kill(client.handle, no_restart=False)  # the actor's process dies; Ray starts it again from its file
    after = wait_until(lambda: _status_or_none(client), seconds=60)
    assert {x["request"]["id"] for x in after["leases"]} == {x["request"]["id"] for x in before["leases"]}
    assert [r["id"] for r in after["waiting"]] == [lease]
    assert running.result(timeout=60).value == "a" and hold_b.result(timeout=60).value == "b"
    assert client.wait_granted(lease, timeout_s=60) == "granted"  # the waiting request got its turn
    client.release(lease)

    client.shutdown()  # stopped for good: a new actor reads the same file
    again = AdmissionClient.connect(state_dir, parse_groups(HALVES))
    try:
        assert again.status()["session"] == before["session"]
        assert again.status()["usage"]["a"]["own"]["cpu"] == 0
    finally:
        again.shutdown()


def _status_or_none(client: AdmissionClient) -> dict | None:
    try:
        return client.status()
    except ray.exceptions.RayError:
        return None


def test_what_a_dead_driver_held_or_asked_for_is_given_back(admission, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    client = admission(state_dir=state_dir)
    driver = textwrap.dedent(
        f"""
        import ray, time
        from ml_system.teams.admission import AdmissionClient
        from ml_system.teams.resources import Resources
        ray.init(address="{ray.get_runtime_context().gcs_address}", log_to_driver=False)
        client = AdmissionClient.attach("{state_dir}")
        held = client.submit("a", "task", Resources(cpu=0.5), label="held")
        assert client.wait_granted(held, 30) == "granted"
        client.submit("a", "task", Resources(cpu=0.5), label="asked")
        print("exiting without releasing", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    usage = client.status()["usage"]["a"]
    assert usage["own"]["cpu"] == 0.5 or usage["waiting"] == 0  # seen before or after the reaper ran
    wait_until(lambda: (u := client.status()["usage"]["a"])["own"]["cpu"] == 0 and u["waiting"] == 0, seconds=60)


def test_quotas_larger_than_the_cluster_are_refused_before_a_queue_starts(ray_cluster: str, tmp_path: Path) -> None:
    too_big = {"teams": {"a": {"quota": {"cpu": 64}}}}
    with pytest.raises(TeamError, match="team 'a': quota 64 CPU is larger than the cluster"):
        AdmissionClient.connect(tmp_path / "big", parse_groups(too_big))
    together = {"teams": {"a": {"quota": {"cpu": 1.5}}, "b": {"quota": {"cpu": 1.5}}}}
    with pytest.raises(TeamError, match="quotas add up to 3 CPU"):
        AdmissionClient.connect(tmp_path / "sum", parse_groups(together))
    assert not (tmp_path / "big" / "admission.json").exists()


def test_a_request_bigger_than_the_quota_or_for_an_unknown_team_is_refused(admission) -> None:
    client = admission()
    with pytest.raises(TeamError, match="asks for 1 CPU, more than the team's quota"):
        client.submit("a", "task", Resources(cpu=1))
    with pytest.raises(TeamError, match="unknown team 'zeta'"):
        client.submit("zeta", "job", Resources(cpu=0.1))
    assert client.status()["waiting"] == []


def test_tasks_run_inside_their_lease_and_carry_their_team(admission) -> None:
    """Children of an admitted task share its placement group: they cannot take more than the lease."""
    client = admission()

    @ray.remote
    def interval() -> tuple[float, float]:
        start = time.time()
        time.sleep(0.5)
        return start, time.time()

    @ray.remote
    def fan_out() -> tuple[str, list[tuple[float, float]]]:
        children = ray.get([interval.options(num_cpus=0.5).remote() for _ in range(3)])
        return os.environ.get("MLSYS_TEAM", ""), children

    team, children = TeamSession(client, "b").submit(fan_out, resources=Resources(cpu=0.5)).result(timeout=120).value
    assert team == "b"
    # three half-CPU children in a half-CPU lease run one after another, never side by side
    ordered = sorted(children)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(ordered))
