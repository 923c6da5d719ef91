"""Retraining triggers beyond the clock: the champion's predictions drift, or its live quality drops.

The comparison is between what the champion predicted on its own test split when it was
registered (``prediction_reference.json``, a sample logged with every training run) and what it
predicted recently, read through a ``PredictionSource``:

- population stability index (PSI) over ten quantile bins of the reference: the usual
  monitoring rule of thumb reads < 0.1 as stable and > 0.25 as shifted;
- the two-sample Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``);
- once labels have arrived for the recent rows, the use case's metric on them beside the
  test metric the champion was registered with.

A threshold left None in the trigger's config is not checked; fewer than ``min_rows`` recent rows
decide nothing. ``DeltaPredictionLog`` reads scored rows from a Delta table of the offline store
(columns ``model_name``, ``model_version``, ``event_timestamp``, ``prediction``, ``label``); a
serving prediction log that writes such a table plugs in by its name in the trigger's
``prediction_log``, and any other log by implementing ``PredictionSource.window``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from ml_system.config import PlatformConfig
from ml_system.config_pipelines import DriftTriggerConfig
from ml_system.errors import ModelNotFoundError, PipelineError
from ml_system.features import FeatureStore
from ml_system.training import tracking
from ml_system.training.evaluate import population_stability_index, score
from ml_system.usecase import UseCase

REFERENCE_FILE = "prediction_reference.json"


class PredictionSource(Protocol):
    def window(self, model_name: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Rows scored in ``(start, end]``: ``model_version``, ``prediction``, ``label`` (NaN until known)."""
        ...


class DeltaPredictionLog:
    """Scored rows in a Delta table of the offline store."""

    COLUMNS = ("model_name", "model_version", "event_timestamp", "prediction", "label")

    def __init__(self, store: FeatureStore, table: str) -> None:
        self.store = store
        self.table = table

    def window(self, model_name: str, start: datetime, end: datetime) -> pd.DataFrame:
        if not self.store.offline.exists(self.table):
            return pd.DataFrame(columns=list(self.COLUMNS))
        have = set(self.store.offline.schema(self.table).names)
        missing = [c for c in self.COLUMNS if c not in have and c != "label"]
        if missing:
            raise PipelineError(f"prediction log '{self.table}' lacks columns {missing}")
        frame = self.store.offline.read_pandas(self.table, columns=[c for c in self.COLUMNS if c in have])
        if "label" not in frame:
            frame["label"] = np.nan
        times = pd.to_datetime(frame["event_timestamp"], utc=True)
        keep = (frame["model_name"] == model_name) & (times > pd.Timestamp(start)) & (times <= pd.Timestamp(end))
        return frame[keep.to_numpy()].reset_index(drop=True)


@dataclass
class DriftVerdict:
    drifted: bool
    reason: str
    model_version: str = ""
    rows: int = 0
    psi: float | None = None
    ks: float | None = None
    metric: str = ""
    metric_now: float | None = None
    metric_at_registration: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_predictions(config: PlatformConfig, model: tracking.RegisteredModel) -> np.ndarray:
    tracking.client(config.mlflow)
    with tempfile.TemporaryDirectory(prefix="mlsys-ref-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=model.run_id, artifact_path=REFERENCE_FILE, dst_path=tmp)
        except Exception as exc:  # MLflow raises several kinds for a missing artifact
            raise PipelineError(
                f"model '{model.name}' version {model.version} has no {REFERENCE_FILE}; retrain it to monitor drift"
            ) from exc
        return np.asarray(json.loads(Path(path).read_text())["predictions"], dtype=np.float64)


def check_drift(
    config: PlatformConfig,
    usecase: UseCase,
    trigger: DriftTriggerConfig,
    at: datetime,
    source: PredictionSource | None = None,
) -> DriftVerdict:
    """Has the champion's prediction distribution or quality moved past the trigger's thresholds at ``at``?"""
    try:
        champion = tracking.resolve(config.mlflow, usecase.model_name, alias=tracking.CHAMPION)
    except ModelNotFoundError:
        return DriftVerdict(False, f"model '{usecase.model_name}' has no champion yet")
    source = source or DeltaPredictionLog(FeatureStore(config), trigger.prediction_log)
    recent = source.window(usecase.model_name, at - timedelta(seconds=trigger.window_s), at)
    recent = recent[recent["model_version"].astype(str) == champion.version]
    verdict = DriftVerdict(False, "", champion.version, len(recent))
    if len(recent) < trigger.min_rows:
        verdict.reason = f"{len(recent)} recent predictions of v{champion.version}, fewer than {trigger.min_rows}"
        return verdict
    predicted = recent["prediction"].to_numpy(dtype=np.float64)
    reference = reference_predictions(config, champion)
    verdict.psi = population_stability_index(reference, predicted)
    verdict.ks = float(ks_2samp(reference, predicted).statistic)
    reasons = []
    if trigger.max_psi is not None and verdict.psi > trigger.max_psi:
        reasons.append(f"PSI {verdict.psi:.3f} > {trigger.max_psi}")
    if trigger.max_ks is not None and verdict.ks > trigger.max_ks:
        reasons.append(f"KS {verdict.ks:.3f} > {trigger.max_ks}")
    labelled = recent[recent["label"].notna()]
    if trigger.max_metric_drop is not None and len(labelled) >= trigger.min_rows and usecase.training is not None:
        spec = usecase.training
        verdict.metric = spec.metric
        verdict.metric_now = score(spec.metric, labelled["label"].to_numpy(), labelled["prediction"].to_numpy())
        registered = champion.tags.get(f"test_{spec.metric}")
        if registered:
            verdict.metric_at_registration = float(registered)
            drop = verdict.metric_at_registration - verdict.metric_now
            drop = drop if spec.mode == "max" else -drop
            if drop > trigger.max_metric_drop:
                reasons.append(f"{spec.metric} dropped by {drop:.3f} (> {trigger.max_metric_drop})")
    verdict.drifted = bool(reasons)
    verdict.reason = "; ".join(reasons) or f"within thresholds (PSI {verdict.psi:.3f}, KS {verdict.ks:.3f})"
    return verdict
