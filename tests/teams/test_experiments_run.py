"""A team's hypothesis queue on the real flights use case: priority order, the team's quota, outcomes recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from ml_system.pipelines.experiments import run_queue
from ml_system.teams.experiments import HypothesisQueue, parse_request
from ml_system.training import tracking
from tests.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TEAMS = {"teams": {"delays": {"quota": {"cpu": 1}, "priority": 5}, "arrivals": {"quota": {"cpu": 1}}}}


def test_experiments_run_by_priority_on_leases_and_are_judged_against_the_champion(
    flights_platform, admission, tmp_path: Path
) -> None:
    home = tmp_path / "mlsys"  # a copy: the session's champion must stay what it is for other tests
    shutil.copytree(flights_platform.config.home, home, ignore=shutil.ignore_patterns("ray_results"))
    config = make_config(home)
    client = admission(TEAMS, state_dir=Path(config.teams.state_dir))
    queue = HypothesisQueue(config.teams.state_dir)

    def submit(priority: int, expected_gain: float, space: dict) -> str:
        request = {
            "team": "delays", "usecase": "flights", "owner": "ada", "priority": priority,
            "expected_gain": expected_gain, "search_space": space, "budget": {"trials": 1, "rounds": 20},
        }  # fmt: skip
        return str(queue.submit(parse_request(request), client.groups)["id"])

    modest = submit(1, -1.0, {"max_depth": 3})  # any model clears a gain of -1
    bold = submit(7, 0.5, {"max_depth": {"randint": [3, 5]}})  # no model gains half a point of AUC here
    done = run_queue(config, "delays", client, max_experiments=1)

    assert [d["id"] for d in done] == [bold]  # the higher priority runs first; the other still waits
    assert queue.get(modest)["state"] == "queued"
    champion = flights_platform.report
    (record,) = done
    assert record["state"] == "succeeded", record["error"]
    out = record["outcome"]
    assert out["reference_source"] == f"champion v{champion.model_version}"
    assert out["reference"] == pytest.approx(champion.test_score, abs=1e-4)
    assert out["gain"] == pytest.approx(out["achieved"] - out["reference"])  # AUC: higher is better
    assert out["trials"] == 1 and out["cpu_seconds"] > 0
    assert out["hypothesis_held"] is False and out["expected_gain"] == 0.5

    run = tracking.client(config.mlflow).get_run(done[0]["outcome"]["run_id"])
    assert run.data.tags["mlsys.team"] == "delays" and run.data.tags["mlsys.hypothesis"] == "refuted"
    assert run.data.tags["mlsys.experiment"] == bold and run.data.tags["mlsys.expected_gain"] == "0.5"
    assert run.data.params["max_depth"] in {"3", "4"}  # the experiment's space, not the use case's
    # an experiment registers a version but moves no alias: the champion is the one it was judged against
    assert tracking.resolve(config.mlflow, "flight_delay").version == champion.model_version
    trials = [g for g in client.status()["grants"] if g["team"] == "delays" and g["label"].startswith("trial")]
    assert len(trials) == 1  # the trial started on a lease of the team
    mlflow.set_tracking_uri(flights_platform.config.mlflow.tracking_uri)
