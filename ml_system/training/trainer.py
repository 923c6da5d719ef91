"""Retraining for any use case: training rows, point-in-time join, Tune, evaluation, MLflow.

The use case says which rows, which label and which model; everything after that is the same
for every use case: the rows are joined with the registered feature service (on-demand features
included), split by the use case's ``split`` column, tuned with its objective and metric, scored
on the test split beside the baseline, logged to MLflow and registered with their lineage (the
feature service and the Delta versions read). Trials are summarised into nested MLflow runs
from the driver after the search (not from inside trials), so a parallel search never contends
for the tracking database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

from ml_system.cluster import refuse_node_local
from ml_system.config import PlatformConfig
from ml_system.errors import UseCaseError
from ml_system.features import FeatureStore
from ml_system.features.definitions import parse_ref
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.training import mlflow_model, tracking
from ml_system.training.evaluate import baseline_score, predict, score
from ml_system.training.model_artifact import ModelSpec
from ml_system.training.tune_storage import tune_storage
from ml_system.training.tune_xgb import TrialSummary, tune_xgboost
from ml_system.usecase import RollingSplit, TrainingSpec, UseCase

SPLITS = ("train", "valid", "test")
DEFAULT_SEED = 7
REFERENCE_SAMPLE = 2000


@dataclass
class TrainReport:
    usecase: str
    model_name: str
    model_version: str
    run_id: str
    metric: str
    valid_score: float
    test_score: float
    baseline_score: float
    rows: dict[str, int]
    best_config: dict[str, Any]
    trials: int
    table_versions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.model_name} v{self.model_version}: test {self.metric} {self.test_score:.4f} "
            f"(baseline {self.baseline_score:.4f}), valid {self.metric} {self.valid_score:.4f}"
        )


@dataclass
class TrainingSet:
    frame: pd.DataFrame
    features: list[str]
    label: str
    split_column: str
    table_versions: dict[str, int]
    registry_version: int = 0

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[(self.frame[self.split_column] == name).to_numpy()]

    def digest(self) -> str:
        """One sha256 over what training reads (features, label, split; names and values, in row order)."""
        columns = [*self.features, self.label, self.split_column]
        hashed = pd.util.hash_pandas_object(self.frame[columns], index=False).to_numpy()
        return hashlib.sha256(json.dumps(columns).encode() + hashed.tobytes()).hexdigest()


def rolling_split(times: pd.Series, split: RollingSplit) -> np.ndarray:
    """Trailing windows before the newest row: test, then validation, then training."""
    anchor = times.max()
    test_from = anchor - pd.Timedelta(split.test)
    valid_from = test_from - pd.Timedelta(split.valid)
    return np.where(times > test_from, "test", np.where(times > valid_from, "valid", "train"))


def build_training_set(
    store: FeatureStore,
    usecase: UseCase,
    as_of: dict[str, int] | None = None,
    as_of_time: datetime | None = None,
) -> TrainingSet:
    """The use case's rows joined point-in-time with its registered feature service.

    ``as_of`` pins Delta versions; ``as_of_time`` builds the set as it could have been built at
    that moment: rows after it are dropped, feature rows written after a training row's time are
    hidden (bitemporal join), and a use case with a ``rolling_split`` is split by trailing windows.
    """
    assert usecase.training_rows is not None
    rows = usecase.training_rows(store, as_of)
    entity_df = rows.frame
    if as_of_time is not None:
        if as_of_time.tzinfo is None:
            raise UseCaseError(f"use case '{usecase.name}': as-of time {as_of_time} has no UTC offset")
        times = pd.to_datetime(entity_df["event_timestamp"], utc=True)
        keep = (times <= pd.Timestamp(as_of_time)).to_numpy()
        entity_df = entity_df[keep].reset_index(drop=True)
        if entity_df.empty:
            raise UseCaseError(f"use case '{usecase.name}': no training row at or before {as_of_time.isoformat()}")
        if usecase.rolling_split is not None:
            entity_df[rows.split_column] = rolling_split(times[keep].reset_index(drop=True), usecase.rolling_split)
    service = store.registry.feature_service(usecase.feature_service)
    versions = {**(as_of or {}), **rows.table_versions}
    frame = store.get_historical_features(
        entity_df, feature_service=service, as_of=versions, bitemporal=as_of_time is not None
    )
    versions.update(frame.attrs.get("table_versions", {}))
    features = [parse_ref(ref)[1] for ref in service.features]
    frame[features] = frame[features].astype("float64")
    unknown = set(frame[rows.split_column].unique()) - set(SPLITS)
    if unknown:
        raise UseCaseError(f"use case '{usecase.name}': split column holds {sorted(unknown)}, not only {SPLITS}")
    return TrainingSet(frame, features, rows.label, rows.split_column, versions, store.registry.version)


def train_usecase(
    config: PlatformConfig,
    usecase: UseCase,
    *,
    num_samples: int = 8,
    num_boost_round: int | None = None,
    alias: str | None = tracking.CHAMPION,
    on_trial_done: Callable[[str, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    search_space: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    admission: TrialAdmission | None = None,
) -> TrainReport:
    """Train, evaluate and register the use case's model; the registry records it as a consumer.

    ``search_space`` overrides parts of the use case's space (an experiment's hypothesis); ``tags``
    go on the MLflow run and the model version; ``admission`` runs the trials on a team's quota.
    """
    store = FeatureStore(config)
    if on_stage:
        on_stage("point-in-time join")
    ts = build_training_set(store, usecase)
    if on_stage:
        on_stage("tuning")
    assert usecase.training is not None
    report = train_and_register(
        config,
        ts,
        usecase=usecase.name,
        spec=usecase.training,
        feature_service=usecase.feature_service,
        model_name=usecase.model_name,
        num_samples=num_samples,
        num_boost_round=num_boost_round or usecase.training.num_boost_round,
        alias=alias,
        on_trial_done=on_trial_done,
        search_space=search_space,
        tags=tags,
        admission=admission,
    )
    # the feature registry must know this model reads the service's views before any is retired
    store.registry.record_consumer(usecase.feature_service, report.model_name, report.model_version, by="training")
    return report


@dataclass
class Fit:
    """A tuned model scored on the test split beside the baseline, not yet registered."""

    booster: xgb.Booster
    best_config: dict[str, Any]
    valid_score: float
    test_score: float
    baseline_score: float
    rows: dict[str, int]
    trials: list[TrialSummary]
    num_boost_round: int
    seed: int


def fit(
    config: PlatformConfig,
    ts: TrainingSet,
    *,
    usecase: str,
    spec: TrainingSpec,
    model_name: str,
    num_samples: int,
    num_boost_round: int,
    seed: int = DEFAULT_SEED,
    on_trial_done: Callable[[str, float], None] | None = None,
    search_space: Mapping[str, Any] | None = None,
    admission: TrialAdmission | None = None,
) -> Fit:
    """Tune on train/valid, score the winner and the baseline on test (on a team's quota with ``admission``)."""
    # Tune keeps trial checkpoints in ray.storage_uri and MLflow the model: trials and replicas on other nodes read them
    refuse_node_local("train and register a model", config.node_local_locations(("mlflow", "ray_storage")))
    storage_path, storage_filesystem = tune_storage(config.ray)
    train, valid, test = (ts.split(name) for name in SPLITS)
    # one folder per search: two teams' experiments on one model run side by side
    search_name = "tune" if admission is None else admission.group or admission.team
    for name, part in zip(SPLITS, (train, valid, test), strict=True):
        if part.empty:
            raise UseCaseError(f"use case '{usecase}': the {name} split is empty")
    outcome = tune_xgboost(
        train,
        valid,
        ts.features,
        ts.label,
        objective=spec.objective,
        metric=spec.metric,
        mode=spec.mode,
        space={**spec.search_space, **(search_space or {})},
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,
        experiment_name=f"{model_name}_{search_name}",
        seed=seed,
        on_trial_done=on_trial_done,
        admission=admission,
    )
    truth = test[ts.label].to_numpy()
    return Fit(
        booster=outcome.booster,
        best_config=outcome.best_config,
        valid_score=outcome.best_valid_score,
        test_score=score(spec.metric, truth, predict(outcome.booster, test, ts.features)),
        baseline_score=baseline_score(spec.metric, train[ts.label], truth),
        rows={"train": len(train), "valid": len(valid), "test": len(test)},
        trials=outcome.trials,
        num_boost_round=num_boost_round,
        seed=seed,
    )


def lineage_tags(ts: TrainingSet, fitted: Fit) -> dict[str, str]:
    """What a reproduction needs besides the code: the data as read, the winner's config, the seed."""
    return {
        "table_versions": json.dumps(ts.table_versions, sort_keys=True),
        "registry_version": str(ts.registry_version),
        "training_set_sha256": ts.digest(),
        "params": json.dumps(fitted.best_config, sort_keys=True, default=str),
        "num_boost_round": str(fitted.num_boost_round),
        "seed": str(fitted.seed),
    }


def register(
    config: PlatformConfig,
    ts: TrainingSet,
    fitted: Fit,
    *,
    usecase: str,
    spec: TrainingSpec,
    feature_service: str,
    model_name: str,
    alias: str | None,
    extra_tags: dict[str, str] | None = None,
) -> TrainReport:
    """One MLflow run (params, metrics, trials, model) and one model version with its lineage."""
    test = ts.split("test")
    exp_id = tracking.experiment_id(config.mlflow, config.mlflow.experiment or model_name)
    lineage = {
        "usecase": usecase,
        "feature_service": feature_service,
        "offline_store": config.offline_store.uri,
        **lineage_tags(ts, fitted),
        **(extra_tags or {}),
    }
    metric = spec.metric
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{model_name}-train") as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({k: v for k, v in fitted.best_config.items() if not isinstance(v, list)})
        mlflow.log_metrics(
            {
                f"valid_{metric}": fitted.valid_score,
                f"test_{metric}": fitted.test_score,
                f"baseline_{metric}": fitted.baseline_score,
                **{f"rows_{k}": float(v) for k, v in fitted.rows.items()},
            }
        )
        tracking.log_dict_artifact({"features": ts.features, **lineage, "rows": fitted.rows}, "training_set.json")
        # what drift monitoring compares live predictions with (``pipelines.triggers``)
        predicted = np.sort(predict(fitted.booster, test, ts.features))
        sample = predicted[np.linspace(0, len(predicted) - 1, min(REFERENCE_SAMPLE, len(predicted))).astype(int)]
        tracking.log_dict_artifact(
            {"predictions": sample.tolist(), "rows": len(predicted)}, "prediction_reference.json"
        )
        for trial in fitted.trials:
            with mlflow.start_run(experiment_id=exp_id, run_name=trial.trial_id, nested=True):
                mlflow.log_params({k: v for k, v in trial.config.items() if not isinstance(v, list)})
                mlflow.log_metrics({f"valid_{metric}": trial.valid_score, "iterations": float(trial.iterations)})
        model_spec = ModelSpec(
            feature_columns=list(ts.features),
            feature_service=feature_service,
            label=ts.label,
            objective=spec.objective,
            threshold=spec.threshold if spec.threshold is not None else 0.5,
        )
        logged = mlflow_model.log_model(fitted.booster, model_spec, input_example=test[ts.features].head(5))
        run_id = run.info.run_id
    registered = mlflow_model.register_model(
        config.mlflow,
        logged,
        model_name,
        tags={
            "metric": metric,
            f"test_{metric}": f"{fitted.test_score:.4f}",
            f"baseline_{metric}": f"{fitted.baseline_score:.4f}",
            **lineage,
        },
        alias=alias,
    )
    return TrainReport(
        usecase=usecase,
        model_name=model_name,
        model_version=registered.version,
        run_id=run_id,
        metric=metric,
        valid_score=fitted.valid_score,
        test_score=fitted.test_score,
        baseline_score=fitted.baseline_score,
        rows=fitted.rows,
        best_config=fitted.best_config,
        trials=len(fitted.trials),
        table_versions=ts.table_versions,
    )


def train_and_register(
    config: PlatformConfig,
    ts: TrainingSet,
    *,
    usecase: str,
    spec: TrainingSpec,
    feature_service: str,
    model_name: str,
    num_samples: int,
    num_boost_round: int,
    alias: str | None,
    on_trial_done: Callable[[str, float], None] | None = None,
    search_space: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    admission: TrialAdmission | None = None,
) -> TrainReport:
    fitted = fit(
        config,
        ts,
        usecase=usecase,
        spec=spec,
        model_name=model_name,
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        on_trial_done=on_trial_done,
        search_space=search_space,
        admission=admission,
    )
    return register(
        config,
        ts,
        fitted,
        usecase=usecase,
        spec=spec,
        feature_service=feature_service,
        model_name=model_name,
        alias=alias,
        extra_tags=dict(tags or {}),
    )
