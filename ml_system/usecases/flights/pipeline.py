"""The flight-delay loop as steps that the CLI, ``jobs/`` and the quickstart share.

Each step is a plain function over a ``PlatformConfig`` and returns what it did,
so the same code runs from ``mlsys``, from ``ray job submit`` and from tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.training.pipeline import TrainReport, train_and_register
from ml_system.usecases.flights import data, features, training_set

MODEL_NAME = "flight_delay"
# The quickstart replays the evening of 2013-12-30 (the last day with weather): the online store holds what
# was known at 17:00 New York time and the app scores the flights of the next hour.
DEMO_CUTOFF = pd.Timestamp("2013-12-30T17:00:00", tz="America/New_York")


def build_features(config: PlatformConfig) -> dict[str, int]:
    """Raw tables and trailing-rate tables into Delta, definitions into the registry."""
    store = FeatureStore(config)
    versions = data.ingest_raw(store.offline)
    versions.update(features.build_stats_tables(store.offline))
    versions["registry"] = store.apply(features.DEFINITIONS)
    return versions


def train(
    config: PlatformConfig,
    num_samples: int = 8,
    num_boost_round: int = 200,
    on_trial_done: Callable[[str, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainReport:
    store = FeatureStore(config)
    if on_stage:
        on_stage("point-in-time join")
    ts = training_set.build_training_set(store)
    if on_stage:
        on_stage("tuning")
    report = train_and_register(
        config,
        train=ts.split("train"),
        valid=ts.split("valid"),
        test=ts.split("test"),
        features=ts.feature_columns,
        label=training_set.LABEL,
        feature_service=features.flight_delay_service.name,
        table_versions=ts.table_versions,
        model_name=MODEL_NAME,
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        on_trial_done=on_trial_done,
    )
    # the feature registry must know this model reads the service's views before any is retired
    store.registry.record_consumer(
        features.flight_delay_service.name, report.model_name, report.model_version, by="training"
    )
    return report


def materialize(
    config: PlatformConfig, end: datetime, start: datetime | None = None, incremental: bool = False
) -> dict[str, int]:
    store = FeatureStore(config)
    if incremental:
        return store.materialize_incremental(end)
    return store.materialize(start, end)


def demo_flights(config: PlatformConfig, cutoff: pd.Timestamp = DEMO_CUTOFF, hours: int = 1) -> pd.DataFrame:
    """Real flights scheduled in the hour after the cut-off, as the app would be asked."""
    store = FeatureStore(config)
    flights = store.offline.read_pandas(
        data.RAW_FLIGHTS, columns=["carrier", "flight", "tailnum", "origin", "dest", "sched_dep_ts", "dep_delay"]
    )
    sched = flights["sched_dep_ts"].astype("datetime64[ns, UTC]")
    mask = (sched > cutoff.tz_convert("UTC")) & (sched <= cutoff.tz_convert("UTC") + pd.Timedelta(hours=hours))
    return flights[mask.to_numpy()].sort_values("sched_dep_ts").reset_index(drop=True)


@dataclass
class ProbeReport:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    sample: dict[str, Any]


def probe(url: str, payload_rows: list[dict[str, Any]], requests: int = 300) -> ProbeReport:
    """Send real HTTP requests, one flight each, and measure latency."""
    latencies = []
    errors = 0
    sample: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(requests):
            body = {"flights": [payload_rows[i % len(payload_rows)]]}
            t0 = time.perf_counter()
            resp = client.post("/predict", json=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status_code != 200:
                errors += 1
            elif not sample:
                sample = resp.json()
    arr = np.asarray(latencies)
    return ProbeReport(requests, errors, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), sample)
