"""Metrics on the node's Prometheus endpoint, and caches that follow the data version."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pandas as pd
import pytest
import ray

from tests.serving.conftest import Deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_metrics_reach_the_prometheus_endpoint(deploy: Deploy, demo_rows: list[dict[str, Any]]) -> None:
    url = deploy("metrics")
    for row in [*demo_rows[:5], {**demo_rows[0], "tailnum": "N0000Z"}]:
        assert httpx.post(f"{url}/predict", json={"flights": [row]}, timeout=30).status_code == 200
    httpx.post(f"{url}/predict", json={"flights": []}, timeout=30)
    ports = {n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    wanted = {
        "ray_mlsys_serve_requests_total{",
        "ray_mlsys_serve_latency_ms_bucket{",
        "ray_mlsys_serve_batch_size_bucket{",
        "ray_mlsys_serve_cache_lookups_total{",
        "ray_mlsys_serve_missing_features_total{",
        "ray_mlsys_serve_model_version{",
    }

    def found(text: str) -> list[str]:
        lines = text.splitlines()
        wanted_now = [w for w in wanted if w not in text]
        if not any(ln.startswith("ray_mlsys_serve_requests_total{") and 'status="422"' in ln for ln in lines):
            wanted_now.append('requests_total status="422"')
        tagged = [ln for ln in lines if ln.startswith("ray_mlsys_serve_rows_total{") and 'app="metrics"' in ln]
        if not any('model_version="' in ln and 'model_version=""' not in ln for ln in tagged):
            wanted_now.append('rows_total app="metrics" model_version="<the served version>"')
        if not any("missing_features_total{" in ln and 'view="planes"' in ln for ln in lines):
            wanted_now.append('missing_features_total view="planes"')
        return wanted_now

    missing: list[str] = []
    deadline = time.monotonic() + 90  # replicas report every few seconds
    while time.monotonic() < deadline:
        missing = found("\n".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in ports))
        if not missing:
            break
        time.sleep(2)
    assert not missing, missing


def test_prediction_cache_hits_then_misses_after_materialization(
    deploy: Deploy, served_home: Any, demo_rows: list[dict[str, Any]]
) -> None:
    from ml_system.features import FeatureStore
    from ml_system.usecases.flights.demo import DEMO_CUTOFF

    url = deploy("cache", user_config={"prediction_cache_ttl_s": 300, "feature_cache_ttl_s": 300})
    body = {"flights": [demo_rows[3]]}

    def info() -> dict[str, Any]:
        return httpx.get(f"{url}/info", timeout=30).json()

    first = httpx.post(f"{url}/predict", json=body, timeout=30).json()
    before = info()
    assert before["prediction_cache_hit_rate"] == 0.0
    second = httpx.post(f"{url}/predict", json=body, timeout=30).json()
    assert second == first
    assert info()["prediction_cache_hit_rate"] == 0.5
    # a new materialization (a later cut-off for one view) changes the data version: no stale answer
    store = FeatureStore(served_home)
    last = store.online.get_meta("materialized_until:weather")
    start = pd.Timestamp(int(last), tz="UTC").to_pydatetime() if last else DEMO_CUTOFF.to_pydatetime()
    store.materialize(start, start + timedelta(minutes=1), views=["weather"])
    httpx.post(f"{url}/predict", json=body, timeout=30)
    after = info()
    assert after["data_version"] != before["data_version"]
    assert after["prediction_cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
