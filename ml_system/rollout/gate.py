"""The promotion gate: the challenger against the champion on the same held-out rows.

A challenger moves to ``champion`` only if, on the rows neither model was trained or tuned on (the
use case's test split: December for flights), it is (1) no worse on the use case's metric,
(2) no worse calibrated (Brier score and expected calibration error for a classifier, the absolute
mean bias for a regressor) and (3) does not move the prediction distribution too far from the
champion's (population stability index; the Kolmogorov-Smirnov statistic is recorded beside it).
Tolerances come from ``rollout.gate`` in the platform config.

The comparison is recorded where every MLflow user finds it: as ``gate.*`` tags on the challenger's
model version (``gate.passed``, ``gate.champion_version``, ``gate.reasons``, one tag per number)
and as ``gate_*`` metrics on its training run. ``mlsys models promote`` reads that record and
refuses one made against a champion that has since changed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from ml_system.config import PlatformConfig
from ml_system.config_rollout import GateConfig
from ml_system.errors import ModelNotFoundError, RolloutError
from ml_system.training import mlflow_model, tracking
from ml_system.training.evaluate import (
    brier_score,
    expected_calibration_error,
    population_stability_index,
    predict,
    score,
)
from ml_system.usecase import UseCase

HIGHER_IS_BETTER = {"auc": True, "logloss": False, "mae": False, "rmse": False}


@dataclass
class ModelScores:
    version: str
    metric: float
    calibration: dict[str, float]


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    metric: str
    rows: int
    held_out: str
    challenger: ModelScores
    champion: ModelScores | None
    shift: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed: " + "; ".join(self.reasons)
        against = f"v{self.champion.version}" if self.champion else "no champion"
        return f"gate v{self.challenger.version} vs {against} on {self.rows} {self.held_out} rows {verdict}"


def calibration(objective: str, truth: np.ndarray, predicted: np.ndarray, bins: int) -> dict[str, float]:
    if objective.startswith("binary:"):
        return {"brier": brier_score(truth, predicted), "ece": expected_calibration_error(truth, predicted, bins)}
    return {"abs_bias": float(abs(np.mean(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64))))}


def judge(
    metric: str,
    challenger: ModelScores,
    champion: ModelScores | None,
    shift: dict[str, float],
    limits: GateConfig,
) -> list[str]:
    """Why the challenger fails (empty: it passes)."""
    if champion is None:
        return []
    reasons = []
    higher = HIGHER_IS_BETTER.get(metric, True)
    loss = (champion.metric - challenger.metric) if higher else (challenger.metric - champion.metric)
    if loss > limits.max_metric_loss:
        reasons.append(
            f"{metric} {challenger.metric:.4f} is {loss:.4f} worse than the champion's {champion.metric:.4f} "
            f"(allowed {limits.max_metric_loss})"
        )
    allowed = {
        "brier": limits.max_brier_increase,
        "ece": limits.max_ece_increase,
        "abs_bias": limits.max_abs_bias_increase,
    }
    for name, value in challenger.calibration.items():
        worse = value - champion.calibration[name]
        if worse > allowed[name]:
            reasons.append(
                f"calibration {name} {value:.4f} is {worse:.4f} above the champion's {champion.calibration[name]:.4f} "
                f"(allowed {allowed[name]})"
            )
    if shift["psi"] > limits.max_psi:
        reasons.append(f"prediction shift PSI {shift['psi']:.4f} vs the champion exceeds {limits.max_psi}")
    return reasons


def compare(
    config: PlatformConfig,
    usecase: UseCase,
    held_out: pd.DataFrame,
    label: str,
    challenger: tracking.RegisteredModel,
    champion: tracking.RegisteredModel | None,
    held_out_name: str = "test",
) -> GateResult:
    """Score both versions on ``held_out`` and judge the challenger by ``config.rollout.gate``."""
    assert usecase.training is not None
    spec, limits = usecase.training, config.rollout.gate
    if held_out.empty:
        raise RolloutError(f"use case '{usecase.name}': the held-out rows are empty; the gate cannot compare")
    truth = held_out[label].to_numpy()

    def scores(model: tracking.RegisteredModel) -> tuple[ModelScores, np.ndarray]:
        booster, model_spec = mlflow_model.load_model(config.mlflow, model)
        missing = [c for c in model_spec.feature_columns if c not in held_out.columns]
        if missing:
            raise RolloutError(f"v{model.version} reads columns {missing} that the held-out rows lack")
        predicted = predict(booster, held_out, list(model_spec.feature_columns))
        cal = calibration(spec.objective, truth, predicted, limits.calibration_bins)
        return ModelScores(model.version, score(spec.metric, truth, predicted), cal), predicted

    ours, ours_predicted = scores(challenger)
    theirs, shift = None, {"psi": 0.0, "ks": 0.0}
    if champion is not None:
        theirs, theirs_predicted = scores(champion)
        shift = {
            "psi": population_stability_index(theirs_predicted, ours_predicted),
            "ks": float(ks_2samp(theirs_predicted, ours_predicted).statistic),
        }
    reasons = judge(spec.metric, ours, theirs, shift, limits)
    return GateResult(not reasons, reasons, spec.metric, len(held_out), held_out_name, ours, theirs, shift)


def record(config: PlatformConfig, model_name: str, result: GateResult) -> None:
    """The comparison as tags of the challenger's version and metrics of its run."""
    c = tracking.client(config.mlflow)
    version = result.challenger.version
    tags = {
        "gate.passed": str(result.passed).lower(),
        "gate.champion_version": result.champion.version if result.champion else "",
        "gate.reasons": json.dumps(result.reasons),
        "gate.metric": result.metric,
        "gate.held_out": f"{result.held_out} ({result.rows} rows)",
        "gate.result": json.dumps(result.to_dict(), default=str),
    }
    metrics = {f"gate_challenger_{result.metric}": result.challenger.metric}
    metrics.update({f"gate_challenger_{k}": v for k, v in result.challenger.calibration.items()})
    if result.champion is not None:
        metrics[f"gate_champion_{result.metric}"] = result.champion.metric
        metrics.update({f"gate_champion_{k}": v for k, v in result.champion.calibration.items()})
    metrics.update({f"gate_shift_{k}": v for k, v in result.shift.items()})
    for key, value in tags.items():
        c.set_model_version_tag(model_name, version, key, value)
    run_id = tracking.resolve(config.mlflow, model_name, version=version).run_id
    if run_id:
        for key, value in metrics.items():
            c.log_metric(run_id, key, float(value))


def recorded(model: tracking.RegisteredModel) -> GateResult | None:
    """The gate result stored on a version, or None if it was never compared."""
    text = model.tags.get("gate.result")
    if not text:
        return None
    data = json.loads(text)
    data["challenger"] = ModelScores(**data["challenger"])
    data["champion"] = ModelScores(**data["champion"]) if data["champion"] else None
    return GateResult(**data)


def evaluate_and_record(
    config: PlatformConfig, usecase: UseCase, held_out: pd.DataFrame, label: str, challenger_version: str
) -> GateResult:
    """Compare a version with the current champion and write the result to MLflow."""
    challenger = tracking.resolve(config.mlflow, usecase.model_name, version=challenger_version)
    try:
        champion: tracking.RegisteredModel | None = tracking.resolve(
            config.mlflow, usecase.model_name, alias=tracking.CHAMPION
        )
    except ModelNotFoundError:  # no champion yet: nothing to compare with
        champion = None
    if champion is not None and champion.version == challenger.version:
        champion = None
    result = compare(config, usecase, held_out, label, challenger, champion)
    record(config, usecase.model_name, result)
    return result
