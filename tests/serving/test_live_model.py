"""Replicas change model version in place: a pinned version is loaded beside the serving one and
swapped without a restart; a version that does not fit its feature service is refused and the
app keeps answering with the one it had."""

from __future__ import annotations

import time
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
import xgboost as xgb
from ray import serve

from ml_system.config import PlatformConfig
from ml_system.serving.deploy import deploy_config
from ml_system.training import mlflow_model, tracking
from ml_system.training.model_artifact import ModelSpec
from tests.serving.test_reconfigure_and_autoscaling import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "flight_delay"


def register_misfit(config: PlatformConfig) -> str:
    """A valid MLflow model whose columns are not what feature service flight_delay_v1 gives."""
    tracking.client(config.mlflow)
    columns = ["temp", "not_a_feature"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(x, label=(x[:, 0] > 0).astype(float), feature_names=columns),
        5,
    )
    spec = ModelSpec(columns, "flight_delay_v1", "delayed", "binary:logistic")
    import pandas as pd

    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow, "misfits")):
        logged = mlflow_model.log_model(booster, spec, input_example=pd.DataFrame(x[:3], columns=columns))
    return mlflow_model.register_model(config.mlflow, logged, NAME, tags={}, alias=None).version


def copy_of_champion(config: PlatformConfig) -> str:
    champion = tracking.resolve(config.mlflow, NAME)
    model_id = champion.source.removeprefix("models:/") if champion.source.startswith("models:/") else None
    copy = tracking.register_source(
        config.mlflow, NAME, champion.source, run_id=champion.run_id, tags=champion.tags, alias=None, model_id=model_id
    )
    return copy.version


def wait_for(url: str, check: Any, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = httpx.get(f"{url}/info", timeout=30).json()
        if check(info):
            return info
        time.sleep(0.5)
    raise AssertionError(f"replica never reached the expected state: {info}")


def test_a_pinned_version_swaps_in_place_and_a_misfit_is_refused(
    serve_port: int, served_home: PlatformConfig, demo_rows: list[dict[str, Any]]
) -> None:
    misfit = register_misfit(served_home)
    good = copy_of_champion(served_home)
    doc = document(serve_port, served_home.home, "live", {"autoscaling_config": None, "num_replicas": 1})
    url = deploy_config(doc)["live"]
    body = {"flights": demo_rows[:3]}
    try:
        before = httpx.get(f"{url}/info", timeout=30).json()
        first = httpx.post(f"{url}/predict", json=body, timeout=30).json()
        user_config = doc["applications"][0]["deployments"][0]["user_config"]

        user_config["model_version"] = misfit
        deploy_config(doc)
        refused = wait_for(url, lambda i: "refused" in i["config_error"])
        assert f"version {misfit}" in refused["config_error"] and "not_a_feature" in refused["config_error"]
        assert refused["model_version"] == before["model_version"]
        still = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert still.status_code == 200 and still.json() == first

        user_config["model_version"] = good
        deploy_config(doc)
        swapped = wait_for(url, lambda i: i["model_version"] == good)
        assert swapped["served_by"] == before["served_by"] and not swapped["config_error"]  # no restart
        answer = httpx.post(f"{url}/predict", json=body, timeout=30).json()
        assert answer["model_version"] == good
        assert [p["delay_probability"] for p in answer["predictions"]] == [
            p["delay_probability"] for p in first["predictions"]
        ]
    finally:
        serve.delete("live")
