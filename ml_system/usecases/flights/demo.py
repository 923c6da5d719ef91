"""What the quickstart replays: the evening of 2013-12-30, the last day with weather.

The online store holds what was known at 17:00 New York time, and the app is asked about the
flights of the following hour, as real clients would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.usecases.flights.data import LOCAL_TZ, RAW_FLIGHTS

DEMO_CUTOFF = pd.Timestamp("2013-12-30T17:00:00", tz=LOCAL_TZ)


def demo_flights(config: PlatformConfig, cutoff: pd.Timestamp = DEMO_CUTOFF, hours: float = 1) -> pd.DataFrame:
    """Real flights scheduled in the ``hours`` after the cut-off."""
    flights = FeatureStore(config).offline.read_pandas(
        RAW_FLIGHTS,
        columns=["carrier", "flight", "tailnum", "origin", "dest", "sched_dep_ts", "dep_delay", "arr_delay"],
    )
    sched = flights["sched_dep_ts"].astype("datetime64[ns, UTC]")
    start = cutoff.tz_convert("UTC")
    mask = (sched > start) & (sched <= start + pd.Timedelta(hours=hours))
    return flights[mask.to_numpy()].sort_values("sched_dep_ts").reset_index(drop=True)


def flights_from_frame(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Request items from raw flights (for the quickstart, the load tests and the benchmarks)."""
    out = []
    for row in frame.itertuples(index=False):
        sched: datetime = pd.Timestamp(row.sched_dep_ts).tz_convert(LOCAL_TZ).to_pydatetime()
        out.append(
            {
                "carrier": str(row.carrier),
                "flight": int(row.flight),
                "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum),
                "origin": str(row.origin),
                "dest": str(row.dest),
                "sched_dep_time": sched.isoformat(),
            }
        )
    return out


def demo_requests(config: PlatformConfig) -> list[dict[str, Any]]:
    return flights_from_frame(demo_flights(config))
