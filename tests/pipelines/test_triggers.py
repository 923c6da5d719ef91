"""Retraining on drift: the champion's logged predictions against the distribution it was registered with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.config_pipelines import DriftTriggerConfig
from ml_system.features import FeatureStore
from ml_system.pipelines.scheduler import Scheduler
from ml_system.pipelines.triggers import check_drift, population_stability_index, reference_predictions
from ml_system.training import tracking
from tests.pipelines.conftest import TinyRun, copy_home, tiny, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRIGGER = {"name": "drift", "usecase": "tiny", "check_cron": "*/10 * * * *", "window_s": "1d", "min_rows": 100}


def _log(store: FeatureStore, version: str, predictions: np.ndarray, labels: np.ndarray | None, at: datetime) -> None:
    n = len(predictions)
    frame = pd.DataFrame(
        {
            "model_name": pd.array(["tiny_failure"] * n, dtype="string"),
            "model_version": pd.array([version] * n, dtype="string"),
            "event_timestamp": pd.Series(pd.date_range(end=at, periods=n, freq="min")).astype("datetime64[us, UTC]"),
            "prediction": predictions.astype("float64"),
            "label": np.full(n, np.nan) if labels is None else labels.astype("float64"),
        }
    )
    store.offline.write_pandas("prediction_log", frame)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 5, 5000)
    assert population_stability_index(ref, rng.beta(2, 5, 5000)) < 0.02
    assert population_stability_index(ref, rng.beta(5, 2, 5000)) > 1.0


def test_drifted_predictions_trigger_a_retraining_and_stable_ones_do_not(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    config = tiny_config(Path(config.home), triggers=[{**TRIGGER, "trials": 2, "rounds": 20}])
    version = tiny_run.first.model_version
    tracking.client(config.mlflow).set_registered_model_alias("tiny_failure", "champion", version)
    champion = tracking.resolve(config.mlflow, "tiny_failure", alias="champion")
    reference = reference_predictions(config, champion)
    trigger = DriftTriggerConfig(**TRIGGER)
    store = FeatureStore(config)
    now = datetime.now(UTC)
    rng = np.random.default_rng(1)

    _log(store, version, rng.choice(reference, 400), None, now - timedelta(hours=2))
    stable = check_drift(config, tiny(config), trigger, now)
    assert not stable.drifted and stable.rows == 400 and stable.psi is not None and stable.psi < 0.2

    shifted = np.clip(rng.choice(reference, 400) + 0.35, 0, 1)
    _log(store, version, shifted, None, now - timedelta(minutes=5))
    drifted = check_drift(config, tiny(config), trigger, now)
    assert drifted.drifted and "PSI" in drifted.reason and drifted.rows == 800

    # labels that contradict the predictions: the live AUC falls far below the registered one
    quality = DriftTriggerConfig(**{**TRIGGER, "max_psi": None, "max_metric_drop": 0.1})
    later = now + timedelta(days=2)
    predictions = rng.choice(reference, 400)
    _log(store, version, predictions, (predictions < np.median(predictions)).astype(float), later)
    dropped = check_drift(config, tiny(config), quality, later)
    assert dropped.drifted and "auc dropped" in dropped.reason and dropped.metric_now < 0.5

    scheduler = Scheduler(config, owner="test")
    # first sight just before the last 10-minute slot, so exactly one slot is due at ``now`` (first
    # sight 11 minutes back straddled two slots one time in ten, and the older one was skipped)
    slot = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0)
    scheduler.tick(slot - timedelta(minutes=1))
    events = scheduler.tick(now)
    assert len(events) == 1 and events[0]["status"] == "succeeded", events
    assert events[0]["drift"]["drifted"] and events[0]["run_id"].endswith("-drift")
    from ml_system.pipelines import history
    from ml_system.pipelines.storage import open_storage

    record = history.load(open_storage(config), events[0]["run_id"])
    assert record.trigger.startswith("drift:drift: PSI") and record.status == "succeeded"
