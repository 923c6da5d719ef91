"""The hypothesis queue's record keeping: validation, budgets against quotas, priority order, cancellation."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from ml_system.errors import TeamError
from ml_system.teams.experiments import HypothesisQueue, parse_request, to_tune_space
from ml_system.teams.groups import parse_groups

GROUPS = parse_groups({"teams": {"a": {"quota": {"cpu": 2}}, "b": {"quota": {"cpu": 1}}}})


def request(team: str = "a", **extra: Any) -> Any:
    return parse_request({"team": team, "usecase": "flights", "owner": "ada", "expected_gain": 0.01, **extra})


def test_experiments_are_claimed_highest_priority_first_then_first_come(tmp_path: Path) -> None:
    queue = HypothesisQueue(tmp_path)
    ids = {p: queue.submit(request(priority=p), GROUPS)["id"] for p in (1, 5, 3, 5)}
    other = queue.submit(request("b", priority=100), GROUPS)["id"]
    assert [r["priority"] for r in queue.list("a", "queued")] == [5, 5, 3, 1]
    claimed = [queue.claim_next("a")["priority"] for _ in range(4)]
    assert claimed == [5, 5, 3, 1] and queue.claim_next("a") is None
    assert queue.get(other)["state"] == "queued"  # another team's queue is its own
    assert queue.get(ids[1])["state"] == "running"


def test_a_budget_larger_than_the_team_quota_is_refused_before_anything_is_queued(tmp_path: Path) -> None:
    queue = HypothesisQueue(tmp_path)
    with pytest.raises(TeamError, match=r"team 'b' needs 2 CPU at once .* more than its quota \(1 CPU\)"):
        queue.submit(request("b", budget={"trials": 4, "concurrency": 2}), GROUPS)
    with pytest.raises(TeamError, match="unknown team 'zeta'"):
        queue.submit(request("zeta"), GROUPS)
    assert queue.list() == []


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"search_space": {"eta": {"lognormal": [0.1, 0.2]}}}, "search_space"),
        ({"search_space": {"eta": {"loguniform": [0, 0.2]}}}, "search_space"),
        ({"search_space": {"max_depth": {"randint": [8, 3]}}}, "search_space"),
        ({"search_space": {"eta": [0.1, 0.2]}}, "search_space"),
        ({"budget": {"trials": 0}}, "budget.trials"),
        ({"budget": {"cpu_seconds": -5}}, "budget.cpu_seconds"),
        ({"expected_gain": float("nan")}, "expected_gain"),
        ({"owner": ""}, "owner"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_malformed_experiments_are_refused_with_the_field_named(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(TeamError, match=f"field '{field}"):
        request(**extra)


def test_a_search_space_becomes_tune_domains() -> None:
    space = to_tune_space(
        {"max_depth": {"randint": [3, 8]}, "eta": {"loguniform": [0.05, 0.3]}, "tree_method": "hist",
         "grow_policy": {"choice": ["depthwise", "lossguide"]}, "subsample": {"uniform": [0.5, 1.0]}}
    )  # fmt: skip
    assert isinstance(space["max_depth"], tune.search.sample.Integer)
    assert isinstance(space["eta"], tune.search.sample.Float) and space["tree_method"] == "hist"
    assert isinstance(space["grow_policy"], tune.search.sample.Categorical)


def test_only_the_owning_team_cancels_and_a_running_experiment_is_asked_to_stop(tmp_path: Path) -> None:
    queue = HypothesisQueue(tmp_path)
    queued = queue.submit(request(), GROUPS)["id"]
    running = queue.submit(request(priority=9), GROUPS)["id"]
    assert queue.claim_next("a")["id"] == running
    with pytest.raises(TeamError, match="belongs to team 'a', not 'b'"):
        queue.cancel(queued, "b")
    assert queue.get(queued)["state"] == "queued"
    assert queue.cancel(queued, "a")["state"] == "cancelled"
    assert queue.cancel(running, "a")["state"] == "running" and queue.cancel_requested(running)
    queue.finish(running, "cancelled", error="stopped")
    with pytest.raises(TeamError, match="already ended"):
        queue.cancel(running, "a")


def test_concurrent_submissions_lose_nothing(tmp_path: Path) -> None:
    queue = HypothesisQueue(tmp_path)

    def submit_many() -> None:
        for _ in range(10):
            HypothesisQueue(tmp_path).submit(request(), GROUPS)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(queue.list()) == 40
