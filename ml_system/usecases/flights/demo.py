"""What the quickstart replays: the evening of 2013-12-30, the last day with weather.

The online store holds what was known at 17:00 New York time, and the app is asked about the
flights of the following hour, as real clients would. Then a burst of late departures at one
airport goes through the stream, and the airport's flights are asked about again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.usecase import StreamDemo
from ml_system.usecases.flights import departures
from ml_system.usecases.flights.data import LOCAL_TZ, RAW_FLIGHTS
from ml_system.usecases.flights.features import STATS_VIEWS

DEMO_CUTOFF = pd.Timestamp("2013-12-30T17:00:00", tz=LOCAL_TZ)
BURST_ORIGIN = "EWR"
BURST_SIZE = 30
BURST_MIN_DELAY = 60.0


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


def stream_demo(
    config: PlatformConfig, origin: str = BURST_ORIGIN, size: int = BURST_SIZE, cutoff: pd.Timestamp = DEMO_CUTOFF
) -> StreamDemo:
    """The departures the rate views' windows hold at the cut-off, then ``size`` departures from ``origin``,
    each an hour late or more, in the minutes before it; the airport's flights of the demo hour are re-scored."""
    events = FeatureStore(config).offline.read_pandas(departures.DEPARTURES)
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    events = events.sort_values(["event_timestamp", "event_id"], kind="stable")
    at = cutoff.tz_convert("UTC")
    keep_last = max(v.keep_last for v in STATS_VIEWS.values())
    horizon = pd.Timedelta(max(v.state_horizon for v in STATS_VIEWS.values()))
    history = departures.window_history(events, at, keep_last, horizon)
    burst = departures.burst(events, origin, at, count=size, min_delay=BURST_MIN_DELAY)
    items = [item for item in demo_requests(config) if item["origin"] == origin]
    return StreamDemo(
        label=f"{origin} burst ({size} departures, {BURST_MIN_DELAY:.0f}+ min late)",
        history=departures.messages(history),
        burst=departures.messages(burst),
        items=items,
        score_field="delay_probability",
    )
