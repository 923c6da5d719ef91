"""Incremental materialization against rows that land late: whatever the offline table gained
since the last run reaches the online store, and the marks only move forward.

Run on every offline store backend in the type table: a local folder and S3 (moto over HTTP).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from ml_system.config import OFFLINE_STORE_CLASS_FOR_TYPE
from ml_system.errors import EntityDataError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from tests.conftest import make_config, s3_options

pytestmark = pytest.mark.usefixtures("ray_cluster")

driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"))


def at(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def rows(event: str, rate: float, drivers: tuple[int, ...] = (1, 2), created: str | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "driver_id": list(drivers),
            "event_timestamp": [pd.Timestamp(event, tz="UTC")] * len(drivers),
            "created_timestamp": [pd.Timestamp(created or event, tz="UTC")] * len(drivers),
            "rate": [rate] * len(drivers),
        }
    )


@pytest.fixture(params=sorted(OFFLINE_STORE_CLASS_FOR_TYPE))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    config = make_config(tmp_path / "mlsys")
    if request.param == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        config = make_config(tmp_path / "mlsys", MLSYS_OFFLINE_STORE__URI=f"s3://{bucket}/offline")
        config = config.model_copy(
            update={"offline_store": config.offline_store.model_copy(update={"storage_options": s3_options(endpoint)})}
        )
    return FeatureStore(config)


def online_rate(store: FeatureStore, driver_id: int = 1) -> float | None:
    values = store.get_online_features(["stats:rate"], [{"driver_id": driver_id}], now=at("2024-01-02 06:00"))
    return values.values["rate"][0]


def training_rate(store: FeatureStore, when: str, driver_id: int = 1) -> float:
    entity_df = pd.DataFrame({"driver_id": [driver_id], "event_timestamp": [pd.Timestamp(when, tz="UTC")]})
    return float(store.get_historical_features(entity_df, ["stats:rate"])["rate"].iloc[0])


def test_a_row_that_lands_after_the_watermark_with_an_earlier_event_time_reaches_the_online_store(
    store: FeatureStore,
) -> None:
    store.offline.write_pandas("stats", rows("2024-01-02 00:00", 0.1), mode="overwrite")
    store.apply([driver, stats])
    store.materialize_incremental(at("2024-01-02 01:00"))
    assert online_rate(store) == 0.1

    # stream lag: an event of 00:30 is written to the table after the run that went up to 01:00
    store.offline.write_pandas("stats", rows("2024-01-02 00:30", 0.2, drivers=(1,)), mode="append")
    assert training_rate(store, "2024-01-02 02:00") == 0.2
    written = store.materialize_incremental(at("2024-01-02 02:00"))
    assert written == {"stats": 1}  # the late row, not the rows the first run had already written
    assert online_rate(store) == 0.2 == training_rate(store, "2024-01-02 02:00")
    assert online_rate(store, 2) == 0.1
    assert store.materialized_until("stats") == at("2024-01-02 02:00")


def test_the_watermark_never_moves_back_and_an_earlier_end_still_takes_late_rows(store: FeatureStore) -> None:
    store.offline.write_pandas("stats", rows("2024-01-02 00:00", 0.1), mode="overwrite")
    store.apply([driver, stats])
    store.materialize_incremental(at("2024-01-02 05:00"))
    store.offline.write_pandas("stats", rows("2024-01-02 04:00", 0.4, drivers=(1,)), mode="append")

    assert store.materialize_incremental(at("2024-01-02 02:00")) == {"stats": 1}  # an operator's typo
    assert store.materialized_until("stats") == at("2024-01-02 05:00")
    assert online_rate(store) == 0.4
    # explicit windows do not lower it either
    store.materialize(at("2024-01-02 00:00"), at("2024-01-02 03:00"))
    assert store.materialized_until("stats") == at("2024-01-02 05:00")


def test_a_rewritten_source_is_taken_whole_again(store: FeatureStore) -> None:
    store.offline.write_pandas("stats", rows("2024-01-02 00:00", 0.1), mode="overwrite")
    store.apply([driver, stats])
    store.materialize_incremental(at("2024-01-02 01:00"))
    # a correction job rewrites the table: same events, values recomputed later
    corrected = rows("2024-01-02 00:00", 0.15, created="2024-01-02 03:00")
    store.offline.write_pandas("stats", corrected, mode="overwrite")
    assert store.materialize_incremental(at("2024-01-02 04:00")) == {"stats": 2}
    assert online_rate(store) == 0.15 == training_rate(store, "2024-01-02 04:00")


def test_an_end_in_the_future_is_refused_and_writes_nothing(store: FeatureStore) -> None:
    store.offline.write_pandas("stats", rows("2024-01-02 00:00", 0.1), mode="overwrite")
    store.apply([driver, stats])
    skew = store.config.features.max_future_skew_s
    tomorrow = datetime.now(UTC) + timedelta(seconds=skew + 3600)
    with pytest.raises(EntityDataError, match="max_future_skew_s"):
        store.materialize_incremental(tomorrow)
    with pytest.raises(EntityDataError, match="in the future"):
        store.materialize(None, tomorrow)
    assert store.materialized_until("stats") is None and online_rate(store) is None
    within = datetime.now(UTC) + timedelta(seconds=skew / 2)  # clocks differ a little: allowed
    assert store.materialize_incremental(within) == {"stats": 2}
