"""Live model changes under constant load, counted: replicas follow the champion alias without a restart,
a canary steps up to promotion, a bad challenger is rolled back automatically, and no request fails."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.rollout.config import RolloutConfig, Thresholds
from ml_system.rollout.controller import RolloutController
from ml_system.rollout.state import RolloutStore
from ml_system.serving.deploy import deploy_config
from ml_system.serving.route_plan import RoutePlanStore
from ml_system.training import tracking
from ml_system.usecase import load_usecase
from ml_system.usecases.flights.demo import demo_flights, flights_from_frame
from tests.serving.conftest import Deployer
from tests.serving.rollout_load import Answer, Load, register_random
from tests.serving.test_live_model import copy_of_champion
from tests.serving.test_reconfigure_and_autoscaling import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "flight_delay"
FAST = {"alias_poll_s": 0.2}


@pytest.fixture()
def champion_restored(served_home: PlatformConfig) -> Iterator[str]:
    """The session's champion, put back after the test (other tests serve it)."""
    original = tracking.resolve(served_home.mlflow, NAME).version
    yield original
    client = tracking.client(served_home.mlflow)
    client.set_registered_model_alias(NAME, "champion", original)
    store = RolloutStore(served_home.rollout.uri)
    left = store.active("flights")
    if left is not None:  # a test that failed mid-rollout must not block the next one
        store.update("flights", left.id, status="aborted", reason="test teardown")
    RoutePlanStore(served_home.rollout.uri).path("flights").unlink(missing_ok=True)


@pytest.fixture()
def token(served_home: PlatformConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A team token that the in-process rollout controller accepts, kept out of the served home's own token file:
    the apps that other tests share stay without team tokens, so their ``/info`` stays open."""
    from ml_system.teams.groups import load_groups
    from ml_system.teams.identity import TokenStore

    monkeypatch.setattr(served_home.teams, "state_dir", str(tmp_path / "teams"))
    return TokenStore(served_home.teams.state_dir).issue("delays", load_groups(served_home.teams.resource_groups))[1]


def wait_until(check: Any, seconds: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def versions_never_go_back(answers: list[Answer], old: str, new: str) -> None:
    """Per flight key: old answers, then new ones; once a key got the new version it never gets the old one."""
    seen_new: set[int] = set()
    for a in sorted(answers, key=lambda a: a.at):
        if a.version == new:
            seen_new.add(a.key)
        else:
            assert a.version == old, a
            assert a.key not in seen_new, f"flight {a.key} went back to v{old} after v{new}"


def run_rollout(controller: RolloutController, seconds: float = 180) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state, _ = controller.tick()
        if state is not None and not state.running:
            return state
        time.sleep(0.3)
    raise AssertionError(f"rollout did not finish: {controller.status()}")


def test_replicas_follow_the_alias_without_restart_and_a_pinned_app_stays(
    deploy: Deployer, served_home: PlatformConfig, demo_rows: list[dict[str, Any]], champion_restored: str
) -> None:
    old = champion_restored
    new = copy_of_champion(served_home)
    url = deploy("follow", user_config=FAST, num_replicas=1)
    pinned = deploy("pinned", user_config={**FAST, "model_version": old}, num_replicas=1)
    before = httpx.get(f"{url}/info", timeout=30).json()
    load = Load(url, demo_rows[:40], threads=3).start()
    try:
        wait_until(lambda: len(load.answers) > 30, what="first answers")
        tracking.client(served_home.mlflow).set_registered_model_alias(NAME, "champion", new)
        moved = time.monotonic()
        wait_until(lambda: any(a.version == new for a in load.since(moved)), what=f"v{new} in answers")
        after_switch = time.monotonic()
        wait_until(lambda: len(load.since(after_switch)) > 30, what="answers after the switch")
    finally:
        answers = load.stop()
    assert not load.failed(), load.failed()[:5]
    assert {a.version for a in answers} == {old, new}
    versions_never_go_back(answers, old, new)
    info = httpx.get(f"{url}/info", timeout=30).json()
    assert info["model_version"] == new and info["served_by"] == before["served_by"]  # swapped, not restarted
    answer = httpx.post(f"{pinned}/predict", json={"flights": demo_rows[:1]}, timeout=30).json()
    assert answer["model_version"] == old  # a Serve config's pin wins over the alias


def test_a_canary_steps_up_and_promotes_and_a_bad_one_rolls_back_with_no_failed_request(
    deploy: Deployer,
    served_home: PlatformConfig,
    demo_rows: list[dict[str, Any]],
    champion_restored: str,
    token: str,
) -> None:
    flights = load_usecase("flights")
    controller = RolloutController(served_home, flights)
    old = champion_restored
    url = deploy("canary", user_config=FAST, num_replicas=1)
    # many distinct flights (the evening's departures), so each arm's prediction distribution is a fair sample
    items = flights_from_frame(demo_flights(served_home, hours=8))
    load = Load(url, items, threads=4).start()
    try:
        wait_until(lambda: len(load.answers) > 30, what="first answers")
        # 1. a good challenger (the champion's model under a new version) goes 20 -> 50 -> 100 -> champion
        good = copy_of_champion(served_home)
        tracking.client(served_home.mlflow).set_registered_model_alias(NAME, "challenger", good)
        limits = Thresholds(min_requests=40, max_error_rate=0.0, max_p99_ratio=None, max_psi=0.5)
        plan = RolloutConfig(usecase="flights", steps=[20, 50, 100], step_s=3, max_step_wait_s=90, thresholds=limits)
        started = controller.start(plan, token)
        assert started.weight == 20
        with pytest.raises(Exception, match="under way"):
            controller.start(plan, token)  # one rollout per use case at a time
        t_start = time.monotonic()
        promoted = run_rollout(controller)
        assert promoted.status == "promoted", promoted.reason
        assert [e.get("to") for e in promoted.history if "to" in e] == [50, 100]
        assert tracking.resolve(served_home.mlflow, NAME).version == good
        wait_until(
            lambda: httpx.get(f"{url}/info", timeout=30).json()["model_version"] == good, what="adopted challenger"
        )
        during = load.since(t_start)
        assert {a.arm for a in during} >= {"champion", "challenger"}
        versions_never_go_back(load.since(t_start), old, good)

        # 2. a challenger predicting noise is rolled back at its first step: the shift gives it away
        bad = register_random(served_home)
        controller.start(plan.model_copy(update={"steps": [30, 100]}), token)
        t_bad = time.monotonic()
        rolled = run_rollout(controller)
        assert rolled.status == "rolled_back" and "PSI" in rolled.reason, rolled.reason
        assert tracking.resolve(served_home.mlflow, NAME).version == good  # the champion never moved
        saw_bad = load.since(t_bad)
        assert any(a.version == bad for a in saw_bad)
        back = time.monotonic()
        wait_until(lambda: len(load.since(back)) > 40, what="answers after the rollback")
        time.sleep(1)  # one poll period and more: every replica has dropped the challenger
        settled = time.monotonic()
        wait_until(lambda: len(load.since(settled)) > 20, what="answers after settling")
        assert {a.version for a in load.since(settled)} == {good}
    finally:
        answers = load.stop()
    assert answers and not load.failed(), load.failed()[:5]

    # every answer went to the prediction log with its arm and version (flushed every 2 s)
    table = FeatureStore(served_home).offline.read_pandas("prediction_log")
    mine = table[table["model_version"].isin([old, good, bad])]
    by_arm = defaultdict(int)
    for arm in mine["arm"]:
        by_arm[arm] += 1
    assert by_arm["challenger"] > 0 and by_arm["champion"] > 0 and by_arm["reference"] > 0
    assert mine["request_id"].str.len().gt(0).all()
    entries = [(e.action, e.outcome) for e in controller.audit.entries("flights")]
    assert ("rollout_promote", "done") in entries and ("rollback", "done") in entries
    assert ("rollout_start", "refused") in entries


def test_shadow_answers_are_logged_beside_the_champions_and_blue_green_switches_and_rolls_back_at_once(
    deploy: Deployer,
    served_home: PlatformConfig,
    demo_rows: list[dict[str, Any]],
    champion_restored: str,
    token: str,
) -> None:
    flights = load_usecase("flights")
    controller = RolloutController(served_home, flights)
    blue = champion_restored
    url = deploy("colours", user_config=FAST, num_replicas=1)
    load = Load(url, flights_from_frame(demo_flights(served_home, hours=8)), threads=4).start()
    try:
        wait_until(lambda: len(load.answers) > 30, what="first answers")
        # shadow: callers only ever see the champion; the challenger scores a mirror of every request
        green = copy_of_champion(served_home)
        tracking.client(served_home.mlflow).set_registered_model_alias(NAME, "challenger", green)
        limits = Thresholds(min_requests=30, max_p99_ratio=None, max_psi=0.5)
        shadow = controller.start(RolloutConfig(strategy="shadow", steps=[1], step_s=3, thresholds=limits), token)
        t_shadow = time.monotonic()
        held = controller.run(tick_s=0.3)
        assert held is not None and held.running and held.history[-1]["hold"], held
        assert "mean |diff| on the same requests 0.0000" in held.history[-1]["analysis"]
        assert {(a.version, a.arm) for a in load.since(t_shadow)} == {(blue, "champion")}
        controller.abort(token, "shadow seen")

        # blue-green: green takes all traffic in one switch, and an abort gives it all back to blue
        controller.start(RolloutConfig(strategy="blue_green", step_s=600, thresholds=limits), token)
        t_green = time.monotonic()
        wait_until(lambda: any(a.version == green for a in load.since(t_green)), what="green answers")
        switched = time.monotonic() + 0.5
        wait_until(lambda: len(load.since(switched)) > 40, what="answers after the switch")
        assert {a.version for a in load.since(switched)} == {green}
        controller.abort(token, "blue-green drill")
        t_back = time.monotonic()
        wait_until(lambda: any(a.version == blue for a in load.since(t_back)), what="blue answers")
        settled = time.monotonic() + 0.5
        wait_until(lambda: len(load.since(settled)) > 40, what="answers after the rollback")
        assert {a.version for a in load.since(settled)} == {blue}
    finally:
        load.stop()
    assert not load.failed(), load.failed()[:5]
    table = FeatureStore(served_home).offline.read_pandas("prediction_log")
    mirrored = table[(table["arm"] == "shadow") & (table["model_version"] == green)]
    answered = table[(table["arm"] == "champion") & (table["model_version"] == blue)]
    assert len(mirrored) > 0 and set(mirrored["request_id"]) <= set(answered["request_id"])
    assert shadow.strategy == "shadow"


def test_a_rollout_survives_a_restarted_controller_replica_and_serve_controller_and_a_redeploy(
    deploy: Deployer,
    serve_port: int,
    served_home: PlatformConfig,
    champion_restored: str,
    token: str,
) -> None:
    import ray
    from ray.serve.context import _get_global_client

    flights = load_usecase("flights")
    old = champion_restored
    new = copy_of_champion(served_home)
    tracking.client(served_home.mlflow).set_registered_model_alias(NAME, "challenger", new)
    limits = Thresholds(min_requests=30, max_error_rate=0.0, max_p99_ratio=None, max_psi=0.5)
    plan = RolloutConfig(steps=[40, 100], step_s=3, max_step_wait_s=90, thresholds=limits)
    state = RolloutController(served_home, flights).start(plan, token)
    # the app starts after the rollout began: a replica (re)started mid-rollout reads the plan and splits at once
    doc = document(serve_port, served_home.home, "durable", {"autoscaling_config": None, "num_replicas": 1})
    user_config = doc["applications"][0]["deployments"][0]["user_config"]
    user_config.update(FAST)
    url = deploy_config(doc)["durable"]
    deploy.names.append("durable")
    replica = httpx.get(f"{url}/info", timeout=30).json()["served_by"]
    load = Load(url, flights_from_frame(demo_flights(served_home, hours=8)), threads=4).start()
    try:
        wait_until(lambda: {a.arm for a in load.answers} >= {"champion", "challenger"}, what="both arms")
        # Serve's controller dies and comes back; the replicas keep answering and keep the split
        ray.kill(_get_global_client()._controller, no_restart=False)
        t_kill = time.monotonic()
        wait_until(lambda: len(load.since(t_kill)) > 40, what="answers after the controller restart")
        # `serve deploy` of a changed user_config in the middle of the rollout: applied in place
        user_config["max_batch_size"] = 16
        deploy_config(doc)
        wait_until(lambda: httpx.get(f"{url}/info", timeout=30).json()["max_batch_size"] == 16, what="new config")
        assert httpx.get(f"{url}/info", timeout=30).json()["served_by"] == replica
        # a new controller object (a restarted `jobs/rollout.py`) carries on from the stored step
        done = run_rollout(RolloutController(served_home, flights))
        assert done.id == state.id and done.status == "promoted", done.reason
        wait_until(lambda: httpx.get(f"{url}/info", timeout=30).json()["model_version"] == new, what="promotion")
    finally:
        load.stop()
    assert load.answers and not load.failed(), load.failed()[:5]
    assert {a.version for a in load.answers} == {old, new}
