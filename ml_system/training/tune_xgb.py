"""Hyper-parameter search for XGBoost with Ray Tune, for any objective and metric a use case names.

Ray 2.60 runs Train V2 by default, under which ``Tuner(XGBoostTrainer)`` fails;
the data fits one worker, so each trial is a function trainable calling
``xgboost.train`` with Tune's report callback, one CPU each, pruned by ASHA.
ASHA's ``max_t`` stays above the number of boosting rounds so the surviving
trials end on their own and write their final checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost as xgb
from ray import tune
from ray.tune.integration.xgboost import TuneReportCheckpointCallback
from ray.tune.schedulers import ASHAScheduler

# What a use case's search space is merged over: the objective and metric come from its model spec.
DEFAULT_SPACE: dict[str, Any] = {
    "tree_method": "hist",
    "nthread": 1,
    "max_depth": tune.randint(3, 9),
    "eta": tune.loguniform(0.03, 0.3),
    "subsample": tune.uniform(0.6, 1.0),
    "colsample_bytree": tune.uniform(0.6, 1.0),
    "min_child_weight": tune.loguniform(1.0, 20.0),
}


@dataclass
class TrialSummary:
    trial_id: str
    config: dict[str, Any]
    valid_score: float
    iterations: int


@dataclass
class TuneOutcome:
    booster: xgb.Booster
    best_config: dict[str, Any]
    best_valid_score: float
    trials: list[TrialSummary]


def search_space(objective: str, metric: str, seed: int, space: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The platform defaults, the use case's own space over them, then objective, metric and seed."""
    # the metric goes last: early stopping and Tune both read the last evaluation metric
    return {**DEFAULT_SPACE, **(space or {}), "objective": objective, "eval_metric": [metric], "seed": seed}


EARLY_STOPPING_ROUNDS = 25


def train_once(
    config: dict[str, Any],
    data: dict[str, Any],
    num_boost_round: int,
    callbacks: list[Any] | None = None,
) -> xgb.Booster:
    """One training with a trial's config: what each trial runs, and what a reproduction runs again.

    With ``nthread`` 1 and the config's ``seed``, the same rows in the same order give the same trees.
    """
    dtrain = xgb.DMatrix(data["x_train"], label=data["y_train"], feature_names=data["features"])
    dvalid = xgb.DMatrix(data["x_valid"], label=data["y_valid"], feature_names=data["features"])
    return xgb.train(
        config,
        dtrain,
        num_boost_round=num_boost_round,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
        callbacks=callbacks,
    )


def training_data(train: pd.DataFrame, valid: pd.DataFrame, features: list[str], label: str) -> dict[str, Any]:
    return {
        "x_train": train[features].to_numpy(dtype=np.float32),
        "y_train": train[label].to_numpy(dtype=np.float32),
        "x_valid": valid[features].to_numpy(dtype=np.float32),
        "y_valid": valid[label].to_numpy(dtype=np.float32),
        "features": list(features),
    }


def _trainable(config: dict[str, Any], data: dict[str, Any], num_boost_round: int, metric: str) -> None:
    callback = TuneReportCheckpointCallback(metrics={metric: metric}, frequency=0, checkpoint_at_end=True)
    train_once(config, data, num_boost_round, callbacks=[callback])


class _Progress(tune.Callback):
    """Reports finished trials to the caller (a progress bar) on the driver."""

    def __init__(self, on_trial_done: Callable[[str, float], None] | None, metric: str) -> None:
        self.on_trial_done = on_trial_done
        self.metric = metric

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config into the experiment folder; a progress
        # bar's callback holds terminal state that cannot (and need not) travel.
        return {"on_trial_done": None, "metric": self.metric}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.on_trial_done is not None:
            self.on_trial_done(trial.trial_id, float((trial.last_result or {}).get(self.metric, float("nan"))))


def tune_xgboost(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: list[str],
    label: str,
    *,
    objective: str,
    metric: str,
    mode: Literal["max", "min"],
    space: Mapping[str, Any] | None = None,
    num_samples: int = 8,
    num_boost_round: int = 200,
    storage_path: str,
    experiment_name: str,
    seed: int = 7,
    on_trial_done: Callable[[str, float], None] | None = None,
) -> TuneOutcome:
    """Tune ``space`` over the platform defaults; the winner is the best trial that ran to its end."""
    reported = f"valid-{metric}"
    data = training_data(train, valid, features, label)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, data=data, num_boost_round=num_boost_round, metric=reported), {"cpu": 1}
    )
    scheduler = ASHAScheduler(max_t=num_boost_round + 10, grace_period=min(20, num_boost_round), reduction_factor=3)
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(objective, metric, seed, space),
        tune_config=tune.TuneConfig(
            metric=reported,
            mode=mode,
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=tune.search.BasicVariantGenerator(random_state=seed),
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            verbose=0,
            callbacks=[_Progress(on_trial_done, reported)] if on_trial_done else None,
        ),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        if result.error is not None:
            continue
        trials.append(
            TrialSummary(
                trial_id=str(result.path).rsplit("/", 1)[-1],
                config={k: v for k, v in result.config.items() if k not in ("eval_metric",)},
                valid_score=float(result.metrics.get(reported, float("nan"))),
                iterations=int(result.metrics.get("training_iteration", 0)),
            )
        )
    # ASHA-pruned trials stop before the callback writes their final checkpoint;
    # the winner is the best trial that ran to its end.
    finished = [r for r in grid if r.error is None and r.checkpoint is not None and reported in r.metrics]
    if not finished:
        raise RuntimeError("no trial finished with a checkpoint; raise ASHA max_t above num_boost_round")
    sign = 1.0 if mode == "max" else -1.0
    best = max(finished, key=lambda r: sign * float(r.metrics[reported]))
    booster = TuneReportCheckpointCallback.get_model(best.checkpoint)
    return TuneOutcome(
        booster=booster,
        best_config=dict(best.config),
        best_valid_score=float(best.metrics[reported]),
        trials=trials,
    )
