"""Scoring a model on held-out rows with its use case's metric, beside the baseline it must beat.

The baseline is what a user would ship without a model: the training set's base rate for a
classifier (which ranks nothing: AUC 0.5), the training median for an MAE and the training mean
for the squared errors. A model that does not beat it is no model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score


def predict(booster: xgb.Booster, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    matrix = xgb.DMatrix(frame[features].to_numpy(dtype=np.float32), feature_names=features)
    return booster.predict(matrix)


def score(metric: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    if metric == "auc":
        return float(roc_auc_score(truth, predicted))
    if metric == "logloss":
        return float(log_loss(truth, np.clip(predicted, 1e-7, 1 - 1e-7), labels=[0, 1]))
    if metric == "mae":
        return float(mean_absolute_error(truth, predicted))
    if metric == "rmse":
        return float(np.sqrt(mean_squared_error(truth, predicted)))
    raise ValueError(f"metric '{metric}' has no scorer")


def baseline_prediction(metric: str, train_label: pd.Series) -> float:
    """The constant a user would predict without a model, learned from the training rows only."""
    if metric == "mae":
        return float(train_label.median())
    return float(train_label.mean())


def baseline_score(metric: str, train_label: pd.Series, truth: np.ndarray) -> float:
    constant = np.full(len(truth), baseline_prediction(metric, train_label), dtype=np.float64)
    if metric == "auc":
        return 0.5  # a constant ranks nothing
    return score(metric, truth, constant)


PSI_BINS = 10
PSI_FLOOR = 1e-4


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI of ``recent`` over ten quantile bins of ``reference``: under 0.1 reads as stable, over 0.25 as shifted."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / len(reference)
    now = np.histogram(recent, edges)[0] / len(recent)
    ref, now = np.clip(ref, PSI_FLOOR, None), np.clip(now, PSI_FLOOR, None)
    return float(np.sum((now - ref) * np.log(now / ref)))


def expected_calibration_error(truth: np.ndarray, probability: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width probability bins, weighted by rows."""
    truth, probability = np.asarray(truth, dtype=np.float64), np.asarray(probability, dtype=np.float64)
    which = np.minimum((probability * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.sum() * abs(truth[inside].mean() - probability[inside].mean())
    return float(error / max(len(truth), 1))


def brier_score(truth: np.ndarray, probability: np.ndarray) -> float:
    return float(np.mean((np.asarray(probability, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2))
