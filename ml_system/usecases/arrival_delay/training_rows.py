"""One row per departed flight that arrived, labelled with its arrival delay in minutes.

Prediction time and split are the flights use case's: the moment before departure, January to
October train, November validate, December test. Diverted flights (no arrival delay) are left out.
"""

from __future__ import annotations

from ml_system.features import FeatureStore
from ml_system.usecase import TrainingRows
from ml_system.usecases.flights.training_rows import COLUMNS, prediction_frame, read_flights

LABEL = "arr_delay"


def training_rows(store: FeatureStore, as_of: dict[str, int] | None = None) -> TrainingRows:
    flights, versions = read_flights(store, as_of)
    frame = prediction_frame(flights)
    frame = frame[frame[LABEL].notna()].reset_index(drop=True)
    frame[LABEL] = frame[LABEL].astype("float64")
    keep = [*COLUMNS[:7], "sched_dep_time", "event_timestamp", "split", LABEL]
    return TrainingRows(frame=frame[keep], label=LABEL, table_versions=versions)
