"""The ``rollout`` section of the platform config: where rollouts keep state, and the promotion gate.

Kept beside ``config`` (which imports it), like ``config_pipelines``: the thresholds are checked
when the file is loaded, so a gate that could never be evaluated fails before anything moves.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Section):
    """How much worse than the champion a challenger may be, on the same held-out rows, and still pass.

    Every limit is a tolerance over the champion's own value (0 means "no worse than the champion").
    The metric follows the use case (``auc`` higher is better, ``mae`` lower is better); calibration
    is the Brier score and expected calibration error for a classifier and the absolute mean bias for
    a regressor; shift is the population stability index of the challenger's predictions against the
    champion's on those rows (the usual reading: under 0.1 stable, over 0.25 shifted).
    """

    max_metric_loss: float = Field(0.0, ge=0)
    """How far the challenger's metric may fall behind the champion's, in the metric's own units."""
    max_brier_increase: float = Field(0.005, ge=0)
    max_ece_increase: float = Field(0.02, ge=0)
    max_abs_bias_increase: float = Field(1.0, ge=0)
    """Regression only: how much larger the challenger's |mean(prediction - truth)| may be."""
    max_psi: float = Field(0.25, ge=0)
    """Largest prediction-distribution shift between the two models on the same rows."""
    calibration_bins: int = Field(10, ge=2, le=100)


class PredictionLogConfig(_Section):
    """Every served prediction, buffered in the replica and appended to a Delta table in batches."""

    enabled: bool = True
    table: str = "prediction_log"
    """Delta table of the offline store (what the drift triggers read by default)."""
    buffer_rows: int = Field(10_000, ge=1, le=10_000_000)
    """Rows a replica holds before it drops new ones (counted in ``ml_system_prediction_log_dropped``)."""
    flush_interval_s: float = Field(2.0, gt=0, le=3600)
    flush_rows: int = Field(2_000, ge=1)
    """A flush starts early once this many rows wait."""


class RolloutSettings(_Section):
    uri: str = ""
    """Rollout state and the audit log (default ``<home>/rollout``); a folder every node mounts in a cluster."""
    gate: GateConfig = Field(default_factory=GateConfig)
    owners: dict[str, str] = Field(default_factory=dict)
    """``usecase: team``: only that team's token may promote, roll back or abort the use case's model.
    A use case not listed accepts any team's valid token."""
    prediction_log: PredictionLogConfig = Field(default_factory=PredictionLogConfig)
    tick_s: float = Field(5.0, gt=0, le=3600)
    """How often a running rollout's controller analyses the current step."""
