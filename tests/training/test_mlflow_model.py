"""Registered models are MLflow models that any MLflow tool loads, and that we load only when every
file is the one registered and the spec agrees with the booster (real MLflow on sqlite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml

from ml_system.config import PlatformConfig
from ml_system.errors import ModelIntegrityError, ModelSpecError
from ml_system.training import mlflow_model, tracking
from ml_system.training.model_artifact import ModelSpec, tree_digest

pytestmark = pytest.mark.integration

COLUMNS = ["temp", "wind_speed", "plane_year", "carrier_rate", "dep_hour"]
NAME = "flight_delay"


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=COLUMNS)
    data["dep_hour"] = rng.integers(5, 23, size=rows).astype(np.float32)  # whole numbers, as float32 serving sends
    data.loc[data.index % 7 == 0, "plane_year"] = np.nan  # unknown planes, as online lookups miss
    return data


def train(objective: str = "binary:logistic", seed: int = 0, columns: list[str] = COLUMNS) -> xgb.Booster:
    data = frame(2_000, seed)
    label = (data["temp"] + 0.5 * data["carrier_rate"] > 0).astype(float)
    if objective.startswith("reg:"):
        label = 10 * data["temp"] + data["dep_hour"]
    matrix = xgb.DMatrix(data[columns].to_numpy(np.float32), label=label, feature_names=columns)
    return xgb.train({"objective": objective, "max_depth": 3, "seed": seed, "nthread": 1}, matrix, 20)


def spec(objective: str = "binary:logistic", columns: list[str] = COLUMNS) -> ModelSpec:
    return ModelSpec(list(columns), "flight_delay_service", "delayed", objective)


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    return train()


@pytest.fixture()
def config(platform_config: PlatformConfig) -> PlatformConfig:
    tracking.client(platform_config.mlflow)  # the run's tracking URI
    return platform_config


def log_and_register(
    config: PlatformConfig, booster: xgb.Booster, model_spec: ModelSpec | None = None
) -> tracking.RegisteredModel:
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow)):
        logged = mlflow_model.log_model(booster, model_spec or spec(), input_example=frame(5, 1))
    return mlflow_model.register_model(config.mlflow, logged, NAME, tags={"feature_service": "flight_delay_service"})


def stored(config: PlatformConfig, registered: tracking.RegisteredModel) -> Path:
    """The version's files where the artifact store keeps them, to tamper with."""
    uri = tracking.client(config.mlflow).get_model_version_download_uri(registered.name, registered.version)
    return Path(urlparse(uri).path)


def rewrite_mlmodel(directory: Path, change: Callable[[dict], None]) -> None:
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    change(mlmodel)
    (directory / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def reverse_spec_columns(mlmodel: dict) -> None:
    mlmodel["metadata"]["model_spec"]["feature_columns"].reverse()


def retag(config: PlatformConfig, registered: tracking.RegisteredModel) -> tracking.RegisteredModel:
    """What someone with write access to both store and registry could do: record the new files' digest."""
    digest = tree_digest(stored(config, registered), mlflow_model.UNCHECKED)
    tracking.client(config.mlflow).set_model_version_tag(registered.name, registered.version, "sha256", digest)
    return tracking.resolve(config.mlflow, registered.name, version=registered.version)


def test_pyfunc_loads_the_champion_alias_and_predicts_what_our_loader_scores(config, booster) -> None:
    registered = log_and_register(config, booster)
    rows = frame(300, seed=2)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    # MLflow wrote its registered_model_meta into the local store; our checksum must still hold
    assert (stored(config, registered) / "registered_model_meta").is_file()
    ours, model_spec = mlflow_model.load_model(config.mlflow, tracking.resolve(config.mlflow, NAME, alias="champion"))
    served = ours.inplace_predict(rows[model_spec.feature_columns].to_numpy(dtype=np.float32))
    assert np.array_equal(np.asarray(pyfunc.predict(rows)), served)
    assert len(set(np.round(served, 6))) > 10  # not a constant model
    # the pyfunc sees our spec too, and a caller's column order does not matter to it
    assert pyfunc.metadata.metadata["model_spec"]["feature_columns"] == COLUMNS
    assert np.array_equal(np.asarray(pyfunc.predict(rows[COLUMNS[::-1]])), served)
    assert pyfunc.metadata.get_input_schema().input_names() == COLUMNS
    assert model_spec == spec()


def test_the_version_is_an_xgboost_mlflow_model_with_aliases_and_tags_never_stages(config, booster) -> None:
    registered = log_and_register(config, booster)
    assert registered.aliases == ["champion"]
    assert registered.stage in ("", "None")
    assert registered.source.startswith("models:/m-")
    assert len(registered.tags["sha256"]) == 64 and registered.tags["feature_service"] == "flight_delay_service"
    files = sorted(p.name for p in stored(config, registered).iterdir())
    assert "model.ubj" in files and "input_example.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))]
    mlmodel = yaml.safe_load((stored(config, registered) / "MLmodel").read_text())
    assert mlmodel["flavors"]["xgboost"]["model_format"] == "ubj"
    assert registered.tags["sha256"] == tree_digest(stored(config, registered), mlflow_model.UNCHECKED)


def test_a_version_without_its_checksum_tag_is_refused(config, booster) -> None:
    registered = log_and_register(config, booster)
    tracking.client(config.mlflow).delete_model_version_tag(NAME, registered.version, "sha256")
    untagged = tracking.resolve(config.mlflow, NAME, version=registered.version)
    with pytest.raises(ModelIntegrityError, match=f"model '{NAME}' version {registered.version} has no 'sha256' tag"):
        mlflow_model.load_model(config.mlflow, untagged)


def swap_booster(directory: Path) -> None:
    train(seed=7).save_model(directory / "model.ubj")  # same columns, other trees


def add_file(directory: Path) -> None:
    (directory / "extra.py").write_text("import os\n")


def drop_input_example(directory: Path) -> None:
    (directory / "input_example.json").unlink()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: rewrite_mlmodel(d, reverse_spec_columns),
        swap_booster,
        add_file,
        drop_input_example,
        lambda d: rewrite_mlmodel(d, lambda m: m["metadata"]["model_spec"].update(threshold=0.1)),
    ],
    ids=["spec-columns-reversed", "booster-swapped", "file-added", "input-example-removed", "threshold-changed"],
)
def test_a_changed_file_is_refused(config, booster, tamper: Callable[[Path], None]) -> None:
    registered = log_and_register(config, booster)
    tamper(stored(config, registered))
    with pytest.raises(ModelIntegrityError, match=f"'{NAME}' version {registered.version}: its files have checksum"):
        mlflow_model.load_model(config.mlflow, registered)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (reverse_spec_columns, "feature names are the spec's columns in another order"),
        (lambda m: m["metadata"]["model_spec"].update(feature_columns=["a", "b"]), "feature names differ"),
        (lambda m: m["metadata"]["model_spec"].update(objective="reg:squarederror"), "objective is 'binary:logistic'"),
        (lambda m: m["metadata"]["model_spec"].pop("label"), "lacks keys \\['label'\\]"),
        (lambda m: m["metadata"].pop("model_spec"), "model spec is NoneType"),
        (lambda m: m["metadata"]["model_spec"].update(threshold="high"), "threshold must be a number"),
        (lambda m: m["flavors"]["xgboost"].update(model_format="xgb"), "not an XGBoost model in JSON or UBJSON"),
        (lambda m: m["flavors"]["xgboost"].update(data="../../elsewhere.ubj"), "not a file inside the model"),
    ],
    ids=[
        "columns-reversed",
        "columns-renamed",
        "objective",
        "spec-incomplete",
        "no-spec",
        "threshold-type",
        "format",
        "path-escape",
    ],
)
def test_a_spec_the_booster_contradicts_is_refused_even_under_a_matching_checksum(
    config, booster, change, reason
) -> None:
    registered = log_and_register(config, booster)
    rewrite_mlmodel(stored(config, registered), change)
    with pytest.raises(ModelIntegrityError, match=reason):
        mlflow_model.load_model(config.mlflow, retag(config, registered))


def test_a_signature_that_differs_from_the_spec_is_refused(config, booster) -> None:
    registered = log_and_register(config, booster)

    def shuffle_signature(mlmodel: dict) -> None:
        inputs = json.loads(mlmodel["signature"]["inputs"])
        mlmodel["signature"]["inputs"] = json.dumps(inputs[::-1])

    rewrite_mlmodel(stored(config, registered), shuffle_signature)
    with pytest.raises(ModelIntegrityError, match="signature inputs"):
        mlflow_model.load_model(config.mlflow, retag(config, registered))


def test_files_that_are_not_an_mlflow_model_are_refused(config) -> None:
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow)) as run:
        mlflow.log_text("{}", "model/model.json")
    registered = tracking.register_model(config.mlflow, NAME, run.info.run_id, "model", tags={})
    with pytest.raises(ModelIntegrityError, match="not an MLflow model"):
        mlflow_model.load_model(config.mlflow, retag(config, registered))


@pytest.mark.parametrize(
    ("model_spec", "reason"),
    [
        (spec(columns=COLUMNS[::-1]), "another order"),
        (spec(objective="reg:squarederror"), "objective is 'binary:logistic'"),
    ],
    ids=["columns-reversed", "objective"],
)
def test_logging_refuses_a_spec_the_booster_contradicts(config, booster, model_spec, reason) -> None:
    with (
        mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow)),
        pytest.raises(ModelSpecError, match=reason),
    ):
        mlflow_model.log_model(booster, model_spec, input_example=frame(5, 1))
    assert tracking.list_versions(config.mlflow) == []


def test_logging_refuses_an_example_without_the_columns_or_a_run(config, booster) -> None:
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow)):
        with pytest.raises(ModelSpecError, match="lacks the spec's feature columns \\['temp'\\]"):
            mlflow_model.log_model(booster, spec(), input_example=frame(5, 1).drop(columns="temp"))
        with pytest.raises(ModelSpecError, match="no rows"):
            mlflow_model.log_model(booster, spec(), input_example=frame(5, 1).head(0))
    with pytest.raises(ModelSpecError, match="needs an active MLflow run"):
        mlflow_model.log_model(booster, spec(), input_example=frame(5, 1))


def test_a_regression_model_round_trips_with_its_objective(config) -> None:
    regressor = train("reg:squarederror")
    registered = log_and_register(config, regressor, spec("reg:squarederror"))
    loaded, model_spec = mlflow_model.load_model(config.mlflow, registered)
    assert model_spec.objective == "reg:squarederror"
    rows = frame(50, seed=3)
    minutes = mlflow.pyfunc.load_model(f"models:/{NAME}/{registered.version}").predict(rows)
    assert np.array_equal(np.asarray(minutes), loaded.inplace_predict(rows[COLUMNS].to_numpy(dtype=np.float32)))
    assert np.asarray(minutes).max() > 1.0  # minutes, not a probability
