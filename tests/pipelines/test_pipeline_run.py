"""The retraining pipeline on the cluster: steps as named Ray tasks, a challenger, a cache, a history."""

from __future__ import annotations

import json

import pytest
import ray

from ml_system.errors import ModelNotFoundError
from ml_system.pipelines import history
from ml_system.pipelines.storage import open_storage
from ml_system.training import tracking
from tests.pipelines.conftest import PARAMS, TinyRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_run_registers_a_challenger_and_records_every_step(tiny_run: TinyRun) -> None:
    run, config = tiny_run.first, tiny_run.config
    assert [s.status for s in run.steps] == ["succeeded"] * 7
    assert [s.task for s in run.steps][:2] == ["pipeline:tiny:ingest", "pipeline:tiny:validate"]
    challenger = tracking.resolve(config.mlflow, "tiny_failure", alias="challenger")
    assert challenger.version == run.model_version
    assert challenger.tags["pipeline_run"] == run.run_id
    assert json.loads(challenger.tags["table_versions"]).keys() >= {"tiny_readings", "tiny_events"}
    assert json.loads(challenger.tags["params"])["seed"] == PARAMS.seed
    # promotion is the rollout's decision: a pipeline never moves the champion
    with pytest.raises(ModelNotFoundError):
        tracking.resolve(config.mlflow, "tiny_failure", alias="champion")
    stored = history.load(open_storage(config), run.run_id)
    assert stored.status == "succeeded" and stored.model_version == run.model_version
    validated = stored.step("validate").detail["tables"]["tiny_readings"]
    assert validated["rows_checked"] > 0 and validated["failures"] == []
    assert stored.step("train").outputs["fit"]["trials"] and stored.step("train").inputs["params"]["trials"] == 2
    assert stored.step("start_canary").outputs["canary"].startswith("not started")
    assert stored.code["source"] and stored.code["libraries"]["xgboost"]


def test_the_ray_dashboard_lists_each_step_as_a_named_task(tiny_run: TinyRun) -> None:
    from ray.util.state import list_tasks

    found = list_tasks(
        filters=[("name", "=", "pipeline:tiny:train")], limit=100, timeout=120, raise_on_missing_output=False
    )
    names = {t.name for t in found}
    assert names == {"pipeline:tiny:train"}
    assert ray.is_initialized()


def test_unchanged_inputs_skip_the_cached_steps(tiny_run: TinyRun) -> None:
    second = tiny_run.second
    status = {s.name: s.status for s in second.steps}
    assert status == {
        "ingest": "succeeded", "validate": "succeeded", "build_training_set": "cached", "train": "cached",
        "evaluate": "succeeded", "register": "cached", "start_canary": "succeeded",
    }  # fmt: skip
    assert second.model_version == tiny_run.first.model_version
    assert second.step("train").cache_key == tiny_run.first.step("train").cache_key
    assert len(tracking.list_versions(tiny_run.config.mlflow, "tiny_failure")) == 1
    runs = history.list_runs(open_storage(tiny_run.config), "tiny")
    assert {r.run_id for r in runs} >= {tiny_run.first.run_id, second.run_id}
