"""The flight-delay training set: one row per departed flight, features as of
the moment before it left.

The prediction time of a flight is the earlier of its scheduled and actual
departure, less one microsecond: a flight that left early must not see its own
departure among the trailing rates, and nothing that departed after it counts.
Split by scheduled departure: January-October train, November validate,
December test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml_system.features import FeatureStore
from ml_system.usecases.flights.data import RAW_FLIGHTS
from ml_system.usecases.flights.features import DELAY_THRESHOLD_MIN, flight_delay_service, ondemand_features

LABEL = "delayed"


@dataclass
class TrainingSet:
    frame: pd.DataFrame
    feature_columns: list[str]
    table_versions: dict[str, int]

    def split(self, name: str) -> pd.DataFrame:
        month = self.frame["sched_dep_ts"].dt.tz_convert("America/New_York").dt.month
        masks = {"train": month <= 10, "valid": month == 11, "test": month == 12}
        return self.frame[masks[name].to_numpy()]


def entity_frame(flights: pd.DataFrame) -> pd.DataFrame:
    departed = flights[~flights["cancelled"]].copy()
    before = np.minimum(departed["sched_dep_ts"].to_numpy(), departed["dep_ts"].to_numpy())
    departed["event_timestamp"] = pd.to_datetime(before, utc=True) - pd.Timedelta(1, "us")
    departed[LABEL] = (departed["dep_delay"] > DELAY_THRESHOLD_MIN).astype("int8")
    keep = ["carrier", "flight", "tailnum", "origin", "dest", "route", "sched_dep_ts", "event_timestamp", LABEL]
    return departed[keep].reset_index(drop=True)


def build_training_set(store: FeatureStore, as_of: dict[str, int] | None = None) -> TrainingSet:
    versions = dict(as_of or {})
    flights_version = versions.get(RAW_FLIGHTS, store.offline.version(RAW_FLIGHTS))
    versions[RAW_FLIGHTS] = flights_version
    flights = store.offline.read_pandas(
        RAW_FLIGHTS,
        version=flights_version,
        columns=[
            "carrier",
            "flight",
            "tailnum",
            "origin",
            "dest",
            "route",
            "sched_dep_ts",
            "dep_ts",
            "dep_delay",
            "cancelled",
        ],
    )
    for col in ("sched_dep_ts", "dep_ts"):
        flights[col] = flights[col].astype("datetime64[ns, UTC]")
    entities = entity_frame(flights)
    frame = store.get_historical_features(entities, feature_service=flight_delay_service, as_of=versions)
    versions.update(frame.attrs.get("table_versions", {}))
    ondemand = ondemand_features(frame["sched_dep_ts"].astype("datetime64[ns, UTC]"))
    for col in ondemand.columns:
        frame[col] = ondemand[col].to_numpy()
    feature_columns = [ref.split(":", 1)[1] for ref in flight_delay_service.features] + list(ondemand.columns)
    frame[feature_columns] = frame[feature_columns].astype("float64")
    frame["sched_dep_ts"] = frame["sched_dep_ts"].astype("datetime64[ns, UTC]")
    return TrainingSet(frame=frame, feature_columns=feature_columns, table_versions=versions)
