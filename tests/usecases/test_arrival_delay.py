"""A second use case on the same platform: its own service, model and app, beside flight delay."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.pipelines import steps
from ml_system.training.trainer import TrainReport
from ml_system.usecase import load_usecase
from ml_system.usecases.flights.demo import demo_requests
from tests.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class TwoUseCases:
    config: PlatformConfig
    report: TrainReport
    flights_url: str
    arrival_url: str


@pytest.fixture(scope="module")
def two(flights_platform: Any, serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoUseCases]:
    from ray import serve

    from ml_system.serving.app import AppArgs, build_app
    from ml_system.serving.deploy import run_app

    home = tmp_path_factory.mktemp("two") / "mlsys"
    shutil.copytree(flights_platform.config.home, home, ignore=shutil.ignore_patterns("ray_results"))
    config = make_config(home)
    arrival = load_usecase("arrival_delay")
    FeatureStore(config).apply(list(arrival.definitions), by="test")
    report = steps.train(config, arrival, num_samples=2, num_boost_round=100)
    serving = config.serving.model_copy(update={"port": serve_port})
    urls = {}
    for name, route in (("flights", "/two_flights"), ("arrival_delay", "/arrival_delay")):
        app = build_app(AppArgs(usecase=name, home=str(home)))
        urls[name] = run_app(app, f"two_{name}", serving, route_prefix=route)
    yield TwoUseCases(config, report, urls["flights"], urls["arrival_delay"])
    for name in urls:
        serve.delete(f"two_{name}")


def test_the_regression_beats_predicting_the_training_median(two: TwoUseCases) -> None:
    report = two.report
    print(f"arrival_delay December MAE {report.test_score:.2f} min, training median {report.baseline_score:.2f}")
    assert report.metric == "mae" and report.model_name == "arrival_delay"
    assert report.test_score < report.baseline_score
    assert report.rows["train"] > 250_000 and report.rows["test"] > 25_000


def test_lineage_shows_both_models_reading_the_shared_views(two: TwoUseCases) -> None:
    registry = FeatureStore(two.config).registry
    readers = {c.model for c in registry.consumers("weather")}
    assert {"flight_delay", "arrival_delay"} <= readers
    assert set(registry.feature_services()) >= {"flight_delay_v1", "arrival_delay_v1"}


def test_both_apps_answer_the_same_flight_at_their_own_routes(two: TwoUseCases) -> None:
    flight = demo_requests(two.config)[0]
    delay = httpx.post(f"{two.flights_url}/predict", json={"flights": [flight]}, timeout=30)
    arrival = httpx.post(f"{two.arrival_url}/predict", json={"flights": [flight]}, timeout=30)
    assert delay.status_code == 200 and arrival.status_code == 200, (delay.text, arrival.text)
    assert delay.json()["model_name"] == "flight_delay" and arrival.json()["model_name"] == "arrival_delay"
    [d], [a] = delay.json()["predictions"], arrival.json()["predictions"]
    assert 0 <= d["delay_probability"] <= 1 and isinstance(d["delayed"], bool)
    assert set(a) == {"carrier", "flight", "expected_arrival_delay_min", "missing_features"}
    assert -120 < a["expected_arrival_delay_min"] < 600
    spec = httpx.get(f"{two.arrival_url}/openapi.json", timeout=30).json()
    assert spec["info"]["title"] == "ml_system arrival delay"
    assert "ArrivalEstimate" in spec["components"]["schemas"]


def test_a_use_case_is_served_with_only_its_schemas_and_row_assembly() -> None:
    """The serving code a use case writes stays small: the platform does the rest."""
    root = Path(__file__).resolve().parents[2] / "ml_system" / "usecases"
    for name in ("flights", "arrival_delay"):
        lines = (root / name / "serving.py").read_text().count("\n")
        assert lines < 150, (name, lines)
