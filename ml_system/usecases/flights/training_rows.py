"""The flight-delay training rows: one per departed flight, labelled, as of the moment before it left.

The prediction time of a flight is the earlier of its scheduled and actual departure, less one
microsecond: a flight that left early must not see its own departure among the trailing rates,
and nothing that departed after it counts. Split by scheduled departure: January-October train,
November validate, December test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_system.features import FeatureStore
from ml_system.usecase import TrainingRows
from ml_system.usecases.flights.data import LOCAL_TZ, RAW_FLIGHTS
from ml_system.usecases.flights.departures import DELAY_THRESHOLD_MIN

LABEL = "delayed"
COLUMNS = ["carrier", "flight", "tailnum", "origin", "dest", "route", "sched_dep_ts", "dep_ts", "dep_delay"]


def month_split(sched: pd.Series) -> np.ndarray:
    """January-October train, November validate, December test (by local scheduled departure)."""
    month = sched.dt.tz_convert(LOCAL_TZ).dt.month.to_numpy()
    return np.where(month <= 10, "train", np.where(month == 11, "valid", "test"))


def read_flights(store: FeatureStore, as_of: dict[str, int] | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The raw flights at a pinned Delta version (the latest unless ``as_of`` names one)."""
    version = (as_of or {}).get(RAW_FLIGHTS, store.offline.version(RAW_FLIGHTS))
    flights = store.offline.read_pandas(RAW_FLIGHTS, version=version, columns=[*COLUMNS, "cancelled", "arr_delay"])
    for col in ("sched_dep_ts", "dep_ts"):
        flights[col] = flights[col].astype("datetime64[ns, UTC]")
    return flights, {RAW_FLIGHTS: version}


def prediction_frame(flights: pd.DataFrame) -> pd.DataFrame:
    """Departed flights with their prediction time, on-demand input and split."""
    departed = flights[~flights["cancelled"]].copy()
    before = np.minimum(departed["sched_dep_ts"].to_numpy(), departed["dep_ts"].to_numpy())
    departed["event_timestamp"] = pd.to_datetime(before, utc=True) - pd.Timedelta(1, "us")
    departed["sched_dep_time"] = departed["sched_dep_ts"]
    departed["split"] = month_split(departed["sched_dep_ts"])
    return departed.reset_index(drop=True)


def training_rows(store: FeatureStore, as_of: dict[str, int] | None = None) -> TrainingRows:
    flights, versions = read_flights(store, as_of)
    frame = prediction_frame(flights)
    frame[LABEL] = (frame["dep_delay"] > DELAY_THRESHOLD_MIN).astype("int8")
    keep = [*COLUMNS[:7], "sched_dep_time", "event_timestamp", "split", LABEL]
    return TrainingRows(frame=frame[keep], label=LABEL, table_versions=versions)
