"""A small use case for pipeline tests: hourly sensor readings, and whether a sensor failed.

Real parts (Delta tables, registry, point-in-time join, Tune, MLflow) on a few thousand rows, so
a whole pipeline runs in seconds. Tests name it in the use-case table of their config
(``MLSYS_USECASES__TINY=tests.pipelines.tiny_usecase:usecase``). Its ``evaluate`` and ``register``
steps wrap the default ones with a fault switch a test can set in the pipelines' storage.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from ml_system.config import PlatformConfig
from ml_system.features import DeltaSource, Entity, FeatureService, FeatureStore, FeatureView, Field
from ml_system.features.expectations import ColumnExpectation, TableExpectations
from ml_system.features.offline_store import OfflineStore
from ml_system.usecase import PipelineStep, RollingSplit, ServingSpec, TrainingRows, TrainingSpec, UseCase

READINGS = "tiny_readings"
EVENTS = "tiny_events"
SENSORS = 8
DAYS = 30

sensor = Entity("sensor", ["sensor_id"])
readings = FeatureView(
    name="tiny_readings",
    entities=[sensor],
    schema=[Field("temp"), Field("vibration")],
    source=DeltaSource(READINGS, created_timestamp_field="created_timestamp"),
    ttl=timedelta(hours=6),
    owner="tiny-team",
)
service = FeatureService("tiny_v1", features=["tiny_readings:temp", "tiny_readings:vibration"], owner="tiny-team")

EXPECTATIONS = (
    TableExpectations(
        READINGS,
        timestamp_field="event_timestamp",
        columns={
            "temp": ColumnExpectation(max_null_fraction=0.05, min_value=-30, max_value=60),
            "vibration": ColumnExpectation(min_value=0, max_value=10),
            "sensor_id": ColumnExpectation(kind="string"),
        },
        min_rows=20,
        max_staleness=timedelta(days=1),
        window=timedelta(days=2),
    ),
)


def make_tables(end: datetime, days: int = DAYS, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Readings every hour up to ``end``; an event 30 minutes after each, failed when hot and shaking."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(end=pd.Timestamp(end).floor("h"), periods=days * 24, freq="h")
    frames = []
    for i in range(SENSORS):
        temp = 20 + 10 * np.sin(np.arange(len(hours)) / 12 + i) + rng.normal(0, 3, len(hours))
        vibration = np.clip(rng.gamma(2.0, 1.0, len(hours)), 0, 10)
        frames.append(
            pd.DataFrame({"sensor_id": f"s{i}", "event_timestamp": hours, "temp": temp, "vibration": vibration})
        )
    reads = pd.concat(frames, ignore_index=True)
    reads["event_timestamp"] = reads["event_timestamp"].astype("datetime64[us, UTC]")
    reads["created_timestamp"] = reads["event_timestamp"]
    reads["sensor_id"] = reads["sensor_id"].astype("string")
    risk = (reads["temp"] - 20) / 10 + (reads["vibration"] - 2) + rng.normal(0, 0.7, len(reads))
    events = pd.DataFrame(
        {
            "sensor_id": reads["sensor_id"],
            "event_timestamp": reads["event_timestamp"] + pd.Timedelta(minutes=30),
            "failed": (risk > 1.0).astype("int8"),
        }
    )
    return {READINGS: reads, EVENTS: events}


def write_tables(offline: OfflineStore, end: datetime, **kwargs: Any) -> dict[str, int]:
    return {
        name: offline.write_pandas(name, frame, mode="overwrite") for name, frame in make_tables(end, **kwargs).items()
    }


def build_features(config: PlatformConfig) -> dict[str, int]:
    return write_tables(FeatureStore(config).offline, datetime.now(UTC))


def training_rows(store: FeatureStore, as_of: dict[str, int] | None = None) -> TrainingRows:
    version = (as_of or {}).get(EVENTS, store.offline.version(EVENTS))
    frame = store.offline.read_pandas(EVENTS, version=version)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[ns, UTC]")
    newest = frame["event_timestamp"].max()
    frame["split"] = np.where(
        frame["event_timestamp"] > newest - pd.Timedelta(days=5),
        "test",
        np.where(frame["event_timestamp"] > newest - pd.Timedelta(days=10), "valid", "train"),
    )
    return TrainingRows(frame=frame, label="failed", table_versions={EVENTS: version})


# ---- a fault switch for tests: ``inject/<step>.json`` in the pipelines' storage ---------------------


def _faulty(name: str, real: Any) -> Any:
    def step(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        plan_key, count_key = f"inject/{name}.json", f"inject/{name}.attempts"
        plan = json.loads(ctx.storage.read(plan_key) or b"{}")
        attempts = int(ctx.storage.read(count_key) or b"0") + 1
        ctx.storage.write(count_key, str(attempts).encode())
        if plan.get("mode") == "always":
            raise OSError(f"injected failure of {name}, attempt {attempts}")
        outputs = real(ctx, inputs)
        if plan.get("mode") == "crash_once_after" and attempts == 1:
            raise OSError(f"injected crash after {name} did its work")
        return outputs

    return step


def _steps() -> tuple[PipelineStep, ...]:
    from ml_system.pipelines.dag import DEFAULT_STEPS

    by_name = {s.name: s for s in DEFAULT_STEPS}
    return tuple(
        PipelineStep(**{**vars(by_name[name]), "fn": _faulty(name, by_name[name].fn)})
        for name in ("evaluate", "register")
    )


class Reading(BaseModel):
    sensor_id: str


class Risk(BaseModel):
    sensor_id: str
    failure_probability: float


SERVING = ServingSpec(
    request_item=Reading,
    response_item=Risk,
    items_field="sensors",
    entity_row=lambda r: {"sensor_id": r.sensor_id},
    event_time=lambda r: datetime.now(UTC),
    respond=lambda r, score, decision: {"sensor_id": r.sensor_id, "failure_probability": score},
)

usecase = UseCase(
    name="tiny",
    model_name="tiny_failure",
    route_prefix="/tiny",
    definitions=[sensor, readings, service],
    feature_service=service.name,
    build_features=build_features,
    training_rows=training_rows,
    training=TrainingSpec(objective="binary:logistic", metric="auc", num_boost_round=30),
    serving=SERVING,
    expectations=EXPECTATIONS,
    pipeline_steps=_steps(),
    rolling_split=RollingSplit(valid=timedelta(days=5), test=timedelta(days=5)),
    description="Will a sensor fail in the next half hour? (synthetic, for tests)",
)
