"""Train, evaluate, log and register: the retraining step of the loop.

Trials are summarised into nested MLflow runs from the driver after the search
(not from inside trials), so a parallel search never contends for the tracking
database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from ml_system.config import PlatformConfig
from ml_system.training import mlflow_model, tracking
from ml_system.training.model_artifact import ModelSpec
from ml_system.training.tune_xgb import tune_xgboost


@dataclass
class TrainReport:
    model_name: str
    model_version: str
    run_id: str
    valid_auc: float
    test_auc: float
    rows: dict[str, int]
    best_config: dict[str, Any]
    trials: int
    table_versions: dict[str, int] = field(default_factory=dict)


def predict_proba(booster: xgb.Booster, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    matrix = xgb.DMatrix(frame[features].to_numpy(dtype=np.float32), feature_names=features)
    return booster.predict(matrix)


def train_and_register(
    config: PlatformConfig,
    *,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    features: list[str],
    label: str,
    feature_service: str,
    table_versions: dict[str, int],
    model_name: str,
    num_samples: int = 8,
    num_boost_round: int = 200,
    alias: str = tracking.CHAMPION,
    on_trial_done: Callable[[str, float], None] | None = None,
) -> TrainReport:
    outcome = tune_xgboost(
        train,
        valid,
        features,
        label,
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        storage_path=f"{config.home}/ray_results",
        on_trial_done=on_trial_done,
    )
    test_auc = float(roc_auc_score(test[label], predict_proba(outcome.booster, test, features)))
    rows = {"train": len(train), "valid": len(valid), "test": len(test)}
    exp_id = tracking.experiment_id(config.mlflow)
    lineage = {
        "feature_service": feature_service,
        "table_versions": json.dumps(table_versions, sort_keys=True),
        "offline_store": config.offline_store.uri,
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{model_name}-train") as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({k: v for k, v in outcome.best_config.items() if not isinstance(v, list)})
        mlflow.log_metrics(
            {
                "valid_auc": outcome.best_valid_auc,
                "test_auc": test_auc,
                **{f"rows_{k}": float(v) for k, v in rows.items()},
            }
        )
        tracking.log_dict_artifact({"features": features, **lineage, "rows": rows}, "training_set.json")
        for trial in outcome.trials:
            with mlflow.start_run(experiment_id=exp_id, run_name=trial.trial_id, nested=True):
                mlflow.log_params({k: v for k, v in trial.config.items() if not isinstance(v, list)})
                mlflow.log_metrics({"valid_auc": trial.valid_auc, "iterations": float(trial.iterations)})
        spec = ModelSpec(
            feature_columns=list(features),
            feature_service=feature_service,
            label=label,
            objective=str(outcome.best_config["objective"]),
        )
        logged = mlflow_model.log_model(outcome.booster, spec, input_example=test[features].head(5))
        run_id = run.info.run_id
    registered = mlflow_model.register_model(
        config.mlflow, logged, model_name, tags={"test_auc": f"{test_auc:.4f}", **lineage}, alias=alias
    )
    return TrainReport(
        model_name=model_name,
        model_version=registered.version,
        run_id=run_id,
        valid_auc=outcome.best_valid_auc,
        test_auc=test_auc,
        rows=rows,
        best_config=outcome.best_config,
        trials=len(outcome.trials),
        table_versions=table_versions,
    )
