"""A run rebuilt from its recorded inputs gives the same predictions; what changed since is named."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from ml_system.features import FeatureStore
from ml_system.pipelines.reproduce import reproduce
from ml_system.pipelines.runner import run_pipeline
from ml_system.training import tracking
from tests.pipelines import tiny_usecase
from tests.pipelines.conftest import PARAMS, TinyRun, copy_home, tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_run_reproduces_with_identical_predictions(tiny_run: TinyRun) -> None:
    result = reproduce(tiny_run.config, tiny_run.first.run_id)
    assert result.identical and result.rows_differing == 0 and result.rows_compared > 100
    assert result.version == tiny_run.first.model_version
    assert all(c.same for c in result.checks), result.checks
    items = {c.item for c in result.checks}
    assert {"training set", "booster", "test predictions", "code version", "table tiny_readings"} <= items


def test_new_data_and_new_definitions_rerun_the_steps_and_the_old_run_still_reproduces(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    store = FeatureStore(config)
    # corrections of older readings (same event times, written later): they win the point-in-time join
    corrected = store.offline.read_pandas(tiny_usecase.READINGS).iloc[::20].copy()
    corrected["temp"] += 15.0
    corrected["created_timestamp"] = corrected["created_timestamp"] + pd.Timedelta(minutes=1)
    store.offline.write_pandas(tiny_usecase.READINGS, corrected)
    again = run_pipeline(config, tiny(config), params=PARAMS)
    assert again.status == "succeeded", again.error
    assert again.step("build_training_set").status == "succeeded"  # new inputs: not from the cache
    assert again.model_version != tiny_run.first.model_version
    shorter = dataclasses.replace(tiny_usecase.readings, ttl=timedelta(hours=3))
    store.apply([tiny_usecase.sensor, shorter, tiny_usecase.service], by="test")

    result = reproduce(config, "tiny_failure", tiny_run.first.model_version)
    assert result.identical
    notes = {c.item: c.note for c in result.checks}
    assert notes["table tiny_readings"].startswith("changed since")
    assert notes["feature definitions"].startswith("changed since")

    # a recorded input that no longer describes what the model was trained on is reported as different
    mv = tracking.resolve(config.mlflow, "tiny_failure", version=tiny_run.first.model_version)
    versions = json.loads(mv.tags["table_versions"])
    versions["tiny_readings"] += 1
    tracking.client(config.mlflow).set_model_version_tag(
        "tiny_failure", mv.version, "table_versions", json.dumps(versions)
    )
    tampered = reproduce(config, "tiny_failure", mv.version)
    assert not tampered.identical and tampered.rows_differing > 0
    assert {c.item for c in tampered.differences} >= {"training set", "test predictions"}
