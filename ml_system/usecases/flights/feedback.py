"""Labels of served flights from the flights data: late departures (flights), arrival delays (arrival_delay).

A rollout judges quality on the rows it served once their outcome is known. For the replayed demo
hour that outcome is in the raw flights table already (the departures that really happened), so
the feedback is a join of the prediction log's entity rows with it on carrier, tail number, route
and scheduled departure. A flight not found, or cancelled (no ``dep_delay``), has no label (NaN).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.usecases.flights.data import RAW_FLIGHTS
from ml_system.usecases.flights.departures import DELAY_THRESHOLD_MIN

KEYS = ["carrier", "tailnum", "route", "sched_dep_ts"]


def outcomes(config: PlatformConfig, logged: pd.DataFrame, column: str) -> pd.Series:
    """``column`` of the raw flights table (``dep_delay``, ``arr_delay``) for each logged row, NaN where unknown."""
    if logged.empty:
        return pd.Series([], dtype="float64")
    entities = pd.DataFrame([json.loads(text) for text in logged["entity"]])
    entities["tailnum"] = entities["tailnum"].fillna("").astype(str)
    entities["sched_dep_ts"] = pd.to_datetime(entities["sched_dep_time"], utc=True)
    flights = FeatureStore(config).offline.read_pandas(
        RAW_FLIGHTS, columns=["carrier", "tailnum", "origin", "dest", "sched_dep_ts", column]
    )
    flights["route"] = flights["origin"].astype(str) + "-" + flights["dest"].astype(str)
    flights["tailnum"] = flights["tailnum"].fillna("").astype(str)
    flights["sched_dep_ts"] = pd.to_datetime(flights["sched_dep_ts"], utc=True)
    window = flights["sched_dep_ts"].between(entities["sched_dep_ts"].min(), entities["sched_dep_ts"].max())
    known = flights[window.to_numpy()].drop_duplicates(KEYS)
    joined = entities[KEYS].merge(known[[*KEYS, column]], on=KEYS, how="left")
    return pd.Series(joined[column].to_numpy(dtype="float64"), index=logged.index, dtype="float64")


def departures_feedback(config: PlatformConfig, logged: pd.DataFrame) -> pd.Series:
    """``dep_delay > 15`` for each logged row (aligned with ``logged``), NaN where unknown."""
    delay = outcomes(config, logged, "dep_delay")
    return pd.Series(np.where(delay.isna(), np.nan, (delay > DELAY_THRESHOLD_MIN).astype(float)), index=delay.index)


def arrivals_feedback(config: PlatformConfig, logged: pd.DataFrame) -> pd.Series:
    """The arrival delay in minutes of each logged row, NaN where unknown (cancelled, diverted)."""
    return outcomes(config, logged, "arr_delay")
