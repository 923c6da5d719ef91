"""Hyper-parameter search for XGBoost with Ray Tune, for any objective and metric a use case names.

Ray 2.60 runs Train V2 by default, under which ``Tuner(XGBoostTrainer)`` fails;
the data fits one worker, so each trial is a function trainable calling
``xgboost.train`` with Tune's report callback, one CPU each, pruned by ASHA.
ASHA's ``max_t`` stays above the number of boosting rounds so the surviving
trials end on their own and write their final checkpoint.

A search for a team (``admission``) creates each trial on a lease of the team's quota and
checkpoints every ``checkpoint_every`` rounds; a trial preempted to give borrowed quota back
resumes from its last checkpoint with the rounds it still had to run (``ml_system.teams.tune_admission``).
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

from ml_system.teams.tune_admission import (
    AdmittedScheduler,
    AdmittedVariantGenerator,
    BudgetStopper,
    TrialAdmission,
    TrialGate,
)

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
    xgb_model: xgb.Booster | None = None,
) -> xgb.Booster:
    """One training with a trial's config: what each trial runs, and what a reproduction runs again.

    With ``nthread`` 1 and the config's ``seed``, the same rows in the same order give the same trees.
    ``xgb_model`` continues a booster (a preempted trial resuming from its checkpoint).
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
        xgb_model=xgb_model,
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


def _trainable(
    config: dict[str, Any], data: dict[str, Any], num_boost_round: int, metric: str, checkpoint_every: int = 0
) -> None:
    resumed = tune.get_checkpoint()  # a preempted trial starts again from its last checkpoint
    booster = TuneReportCheckpointCallback.get_model(resumed) if resumed else None
    done = booster.num_boosted_rounds() if booster is not None else 0
    callback = TuneReportCheckpointCallback(
        metrics={metric: metric}, frequency=checkpoint_every, checkpoint_at_end=True
    )
    train_once(config, data, max(1, num_boost_round - done), callbacks=[callback], xgb_model=booster)


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
    storage_filesystem: Any = None,
    experiment_name: str,
    seed: int = 7,
    on_trial_done: Callable[[str, float], None] | None = None,
    admission: TrialAdmission | None = None,
) -> TuneOutcome:
    """Tune ``space`` over the platform defaults; the winner is the best trial that ran to its end.

    With ``admission``, trials run on the team's quota and the search stops at its budget.
    """
    reported = f"valid-{metric}"
    data = training_data(train, valid, features, label)
    every = admission.checkpoint_every if admission is not None else 0
    fn = tune.with_parameters(
        _trainable, data=data, num_boost_round=num_boost_round, metric=reported, checkpoint_every=every
    )
    resources = {"cpu": 1}
    asha = ASHAScheduler(max_t=num_boost_round + 10, grace_period=min(20, num_boost_round), reduction_factor=3)
    scheduler: Any = asha
    search_alg: Any = tune.search.BasicVariantGenerator(random_state=seed)
    stop = None
    gate = TrialGate(admission) if admission is not None else None
    if gate is not None and admission is not None:
        fn.__name__ = f"{admission.team}_xgboost"  # the trial actors' name on the dashboard
        resources = {"cpu": admission.per_trial.cpu, "gpu": admission.per_trial.gpu}
        scheduler = AdmittedScheduler(gate, scheduler)
        search_alg = AdmittedVariantGenerator(gate, random_state=seed, max_concurrent=admission.concurrency)
        stop = BudgetStopper(gate)
    tuner = tune.Tuner(
        tune.with_resources(fn, resources),
        param_space=search_space(objective, metric, seed, space),
        tune_config=tune.TuneConfig(
            metric=reported, mode=mode, num_samples=num_samples, scheduler=scheduler, search_alg=search_alg
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=0,
            stop=stop,
            callbacks=[_Progress(on_trial_done, reported)] if on_trial_done else None,
        ),
    )
    try:
        grid = tuner.fit()
    finally:
        if gate is not None:
            gate.close()
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
