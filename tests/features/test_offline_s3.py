"""The offline store on S3 (moto over HTTP): Delta time travel through the public API,
with the registry in the same bucket."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from tests.conftest import make_config, s3_options

pytestmark = pytest.mark.usefixtures("ray_cluster")

driver = Entity("driver", ["driver_id"])


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_as_of_pins_delta_versions_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    options = s3_options(s3_endpoint)
    config = make_config(
        tmp_path / "mlsys",
        MLSYS_OFFLINE_STORE__URI=f"s3://{s3_bucket}/offline",
        MLSYS_REGISTRY__URI=f"s3://{s3_bucket}/registry",
    )
    config = config.model_copy(
        update={
            "offline_store": config.offline_store.model_copy(update={"storage_options": options}),
            "registry": config.registry.model_copy(update={"storage_options": options}),
        }
    )
    store = FeatureStore(config)
    first = pd.DataFrame(
        {
            "driver_id": [1, 2],
            "event_timestamp": [ts("2024-01-01"), ts("2024-01-01")],
            "created_timestamp": [ts("2024-01-01"), ts("2024-01-01")],
            "rate": [0.1, 0.2],
        }
    )
    assert store.offline.write_pandas("stats", first, mode="overwrite") == 0
    store.apply([driver, FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"), ttl=timedelta(days=2))])
    entity_df = pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [ts("2024-01-02"), ts("2024-01-02")]})
    before = store.get_historical_features(entity_df, ["stats:rate"])
    assert before["rate"].tolist() == [0.1, 0.2]
    assert before.attrs["table_versions"] == {"stats": 0}

    late = first.assign(event_timestamp=ts("2024-01-01 12:00"), created_timestamp=ts("2024-01-03"), rate=[0.5, 0.6])
    assert store.offline.write_pandas("stats", late, mode="append") == 1
    assert store.get_historical_features(entity_df, ["stats:rate"])["rate"].tolist() == [0.5, 0.6]
    again = store.get_historical_features(entity_df, ["stats:rate"], as_of=before.attrs["table_versions"])
    assert again["rate"].tolist() == [0.1, 0.2]
    assert store.freshness("stats").latest_event == ts("2024-01-01 12:00").to_pydatetime()
    assert store.registry.store.latest() == 1  # the registry version lives in the bucket too
