"""The flight-delay app over real HTTP: the documented contract, bad input, unknown entities."""

from __future__ import annotations

import httpx
import pytest

from ml_system.usecases.flights.demo import demo_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def flights(flights_platform) -> list[dict]:
    return demo_requests(flights_platform.config)


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=30)


def test_one_flight(flights_url: str, flights: list[dict], flights_platform) -> None:
    resp = post(flights_url, {"flights": [flights[0]]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == flights_platform.report.model_version
    (pred,) = body["predictions"]
    assert 0.0 < pred["delay_probability"] < 1.0
    assert pred["delayed"] == (pred["delay_probability"] >= 0.5)
    assert pred["missing_features"] == []


def test_many_flights_in_one_call_keep_their_order(flights_url: str, flights: list[dict]) -> None:
    rows = flights[:20]
    many = post(flights_url, {"flights": rows}).json()["predictions"]
    assert [(p["carrier"], p["flight"]) for p in many] == [(r["carrier"], r["flight"]) for r in rows]
    single = [post(flights_url, {"flights": [r]}).json()["predictions"][0] for r in rows[:3]]
    assert [p["delay_probability"] for p in single] == pytest.approx([p["delay_probability"] for p in many[:3]])
    assert len({round(p["delay_probability"], 6) for p in many}) > 1


def test_unknown_airport_and_tail_number_are_scored_with_missing_features(
    flights_url: str, flights: list[dict]
) -> None:
    row = {**flights[0], "origin": "XYZ", "tailnum": "N0NE"}
    resp = post(flights_url, {"flights": [row]})
    assert resp.status_code == 200, resp.text
    pred = resp.json()["predictions"][0]
    assert 0.0 < pred["delay_probability"] < 1.0
    assert {"weather", "planes", "origin_stats", "route_stats"} <= set(pred["missing_features"])
    assert "carrier_stats" not in pred["missing_features"]


def test_stale_features_are_reported_missing(flights_url: str, flights: list[dict]) -> None:
    later = {**flights[0], "sched_dep_time": "2014-03-01T09:00:00-05:00"}
    pred = post(flights_url, {"flights": [later]}).json()["predictions"][0]
    assert "weather" in pred["missing_features"] and "carrier_stats" in pred["missing_features"]
    assert "planes" not in pred["missing_features"]  # no TTL on plane attributes


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: {**r, "origin": "ewr"}, "origin"),
        (lambda r: {k: v for k, v in r.items() if k != "dest"}, "dest"),
        (lambda r: {**r, "flight": "abc"}, "flight"),
        (lambda r: {**r, "sched_dep_time": "2013-12-30T17:02:00"}, "sched_dep_time"),
        (lambda r: {**r, "sched_dep_time": "yesterday"}, "sched_dep_time"),
        (lambda r: {**r, "carrier": None}, "carrier"),
        (lambda r: {**r, "unexpected": 1}, "unexpected"),
    ],
)
def test_bad_payload_gets_422_naming_the_field(flights_url: str, flights: list[dict], mutate, field: str) -> None:
    resp = post(flights_url, {"flights": [mutate(flights[0])]})
    assert resp.status_code == 422, resp.text
    locs = [err["loc"] for err in resp.json()["detail"]]
    assert any(loc[-1] == field for loc in locs), locs


def test_empty_and_malformed_bodies_are_4xx(flights_url: str) -> None:
    assert post(flights_url, {"flights": []}).status_code == 422
    assert post(flights_url, {}).status_code == 422
    resp = httpx.post(f"{flights_url}/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_too_many_rows_and_too_large_bodies_get_413(flights_url: str, flights: list[dict]) -> None:
    resp = post(flights_url, {"flights": [flights[0]] * 51})
    assert resp.status_code == 413
    (detail,) = resp.json()["detail"]
    assert detail["loc"] == ["body", "flights"] and "limit" in detail["msg"]
    big = b'{"flights": [' + b" " * 1_100_000 + b"]}"
    resp = httpx.post(f"{flights_url}/predict", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_health_and_openapi(flights_url: str, flights_platform) -> None:
    health = httpx.get(f"{flights_url}/healthz").json()
    assert health == {
        "status": "ok",
        "model_name": "flight_delay",
        "model_version": flights_platform.report.model_version,
    }
    spec = httpx.get(f"{flights_url}/openapi.json").json()
    assert "/predict" in spec["paths"] and "/healthz" in spec["paths"]
    assert httpx.get(f"{flights_url}/docs").status_code == 200


def test_mlflow_pyfunc_predicts_what_the_app_answers_for_the_same_feature_row(
    flights_url: str, flights: list[dict], flights_platform
) -> None:
    """Any MLflow tool scores the registered model the same as the Serve app does."""
    from datetime import datetime

    import mlflow
    import pandas as pd

    from ml_system.features import FeatureStore
    from ml_system.training import tracking
    from ml_system.usecases.flights.serving import Flight, entity_row

    config = flights_platform.config
    served = [post(flights_url, {"flights": [f]}).json()["predictions"][0] for f in flights[:5]]
    tracking.client(config.mlflow)
    model = mlflow.pyfunc.load_model("models:/flight_delay@champion")
    columns = model.metadata.get_input_schema().input_names()
    store = FeatureStore(config)
    items = [Flight.model_validate(f) for f in flights[:5]]
    online = store.get_online_features(
        "flight_delay_v1", [entity_row(i) for i in items], now=[i.sched_dep_time for i in items]
    )
    # counts come back as ints; the signature is double, and MLflow leaves casting ints to the caller
    rows = pd.DataFrame({c: [float("nan") if v is None else float(v) for v in online.values[c]] for c in columns})
    assert isinstance(items[0].sched_dep_time, datetime)
    got = list(model.predict(rows))
    assert got == pytest.approx([p["delay_probability"] for p in served], rel=1e-6)
