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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.errors import UseCaseError
from ml_system.features import FeatureStore
from ml_system.features.definitions import parse_ref
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.training import mlflow_model, tracking
from ml_system.training.evaluate import baseline_score, predict, score
from ml_system.training.model_artifact import ModelSpec
from ml_system.training.tune_xgb import tune_xgboost
from ml_system.usecase import TrainingSpec, UseCase

SPLITS = ("train", "valid", "test")


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

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[(self.frame[self.split_column] == name).to_numpy()]


def build_training_set(store: FeatureStore, usecase: UseCase, as_of: dict[str, int] | None = None) -> TrainingSet:
    """The use case's rows joined point-in-time with its registered feature service."""
    assert usecase.training_rows is not None
    rows = usecase.training_rows(store, as_of)
    service = store.registry.feature_service(usecase.feature_service)
    versions = {**(as_of or {}), **rows.table_versions}
    frame = store.get_historical_features(rows.frame, feature_service=service, as_of=versions)
    versions.update(frame.attrs.get("table_versions", {}))
    features = [parse_ref(ref)[1] for ref in service.features]
    frame[features] = frame[features].astype("float64")
    unknown = set(frame[rows.split_column].unique()) - set(SPLITS)
    if unknown:
        raise UseCaseError(f"use case '{usecase.name}': split column holds {sorted(unknown)}, not only {SPLITS}")
    return TrainingSet(frame, features, rows.label, rows.split_column, versions)


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
        storage_path=f"{config.home}/ray_results",
        experiment_name=f"{model_name}_{search_name}",
        on_trial_done=on_trial_done,
        admission=admission,
    )
    truth = test[ts.label].to_numpy()
    test_score = score(spec.metric, truth, predict(outcome.booster, test, ts.features))
    baseline = baseline_score(spec.metric, train[ts.label], truth)
    rows = {"train": len(train), "valid": len(valid), "test": len(test)}
    exp_id = tracking.experiment_id(config.mlflow, config.mlflow.experiment or model_name)
    lineage = {
        "usecase": usecase,
        "feature_service": feature_service,
        "table_versions": json.dumps(ts.table_versions, sort_keys=True),
        "offline_store": config.offline_store.uri,
        **(tags or {}),
    }
    metric = spec.metric
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{model_name}-train") as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({k: v for k, v in outcome.best_config.items() if not isinstance(v, list)})
        mlflow.log_metrics(
            {
                f"valid_{metric}": outcome.best_valid_score,
                f"test_{metric}": test_score,
                f"baseline_{metric}": baseline,
                **{f"rows_{k}": float(v) for k, v in rows.items()},
            }
        )
        tracking.log_dict_artifact({"features": ts.features, **lineage, "rows": rows}, "training_set.json")
        for trial in outcome.trials:
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
        logged = mlflow_model.log_model(outcome.booster, model_spec, input_example=test[ts.features].head(5))
        run_id = run.info.run_id
    registered = mlflow_model.register_model(
        config.mlflow,
        logged,
        model_name,
        tags={
            "metric": metric,
            f"test_{metric}": f"{test_score:.4f}",
            f"baseline_{metric}": f"{baseline:.4f}",
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
        valid_score=outcome.best_valid_score,
        test_score=test_score,
        baseline_score=baseline,
        rows=rows,
        best_config=outcome.best_config,
        trials=len(outcome.trials),
        table_versions=ts.table_versions,
    )
