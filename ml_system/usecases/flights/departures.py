"""Departure events: what the trailing delay rates aggregate, as a history in Delta and as stream messages.

One event per flight that departed, at its actual departure time (a cancelled flight never
departed and has no event). It carries the three entity keys the rate views are fed by (carrier,
origin, route) and two values: ``delayed`` (``dep_delay > 15``) and ``dep_delay`` in minutes. The
history table is what training aggregates (``build_offline``); the same fields published to the
stream are what the consumers aggregate for serving.
"""

from __future__ import annotations

import pandas as pd

from ml_system.features import Field
from ml_system.features.streaming.views import EventSource

DEPARTURES = "departure_events"
DELAY_THRESHOLD_MIN = 15
KEYS = ("carrier", "origin", "route")

departures = EventSource(
    name="departures",
    schema=[Field("delayed", "bool"), Field("dep_delay", "float64")],
    table=DEPARTURES,
    timestamp_field="event_timestamp",
    event_id_field="event_id",
)


def flight_id(frame: pd.DataFrame) -> pd.Series:
    """``<carrier><flight>-<origin>-<scheduled departure, UTC>``: one departure, whoever reports it."""
    sched = pd.to_datetime(frame["sched_dep_ts"], utc=True).dt.strftime("%Y%m%dT%H%MZ")
    return frame["carrier"].astype(str) + frame["flight"].astype(str) + "-" + frame["origin"].astype(str) + "-" + sched


def departure_events(flights: pd.DataFrame) -> pd.DataFrame:
    """Departed flights (prepared raw flights) as events, in event-time order."""
    gone = flights[flights["dep_delay"].notna()]
    events = pd.DataFrame(
        {
            "event_id": flight_id(gone).astype("string").to_numpy(),
            "event_timestamp": pd.to_datetime(gone["dep_ts"], utc=True).astype("datetime64[us, UTC]").to_numpy(),
            **{key: gone[key].astype("string").to_numpy() for key in KEYS},
            "delayed": (gone["dep_delay"] > DELAY_THRESHOLD_MIN).to_numpy(),
            "dep_delay": gone["dep_delay"].astype("float64").to_numpy(),
        }
    )
    return events.sort_values(["event_timestamp", "event_id"], kind="stable").reset_index(drop=True)


def messages(events: pd.DataFrame) -> list[dict[str, str]]:
    """Events as a producer publishes them: text fields, ISO times with their offset."""
    out = []
    for row in events.itertuples(index=False):
        out.append(
            {
                "event_id": str(row.event_id),
                "event_timestamp": pd.Timestamp(row.event_timestamp).isoformat(),
                "carrier": str(row.carrier),
                "origin": str(row.origin),
                "route": str(row.route),
                "delayed": "true" if row.delayed else "false",
                "dep_delay": repr(float(row.dep_delay)),
            }
        )
    return out


def window_history(events: pd.DataFrame, until: pd.Timestamp, keep_last: int, horizon: pd.Timedelta) -> pd.DataFrame:
    """The events up to ``until`` that each entity's windows still hold there: its last ``keep_last``
    and those within ``horizon`` of its newest. Replayed into an empty stream state, they give every
    entity the row the history gives it at ``until``."""
    past = events[events["event_timestamp"] <= until]
    keep = pd.Series(False, index=past.index)
    for key in KEYS:
        by = past.groupby(key, sort=False)["event_timestamp"]
        recent = by.cumcount(ascending=False) < keep_last
        within = past["event_timestamp"] > by.transform("max") - horizon
        keep |= recent | within
    return past[keep.to_numpy()]


def burst(
    events: pd.DataFrame, origin: str, at: pd.Timestamp, count: int = 30, min_delay: float = 60.0
) -> pd.DataFrame:
    """``count`` departures from ``origin``, each ``min_delay`` minutes late or more, in the minutes up to ``at``.

    They take the carriers and routes of the airport's latest real departures, as a ground stop
    at one airport delays whatever leaves it.
    """
    recent = events[(events["origin"] == origin) & (events["event_timestamp"] <= at)].tail(count)
    if recent.empty:
        raise ValueError(f"no departures from '{origin}' before {at} to model a burst on")
    picks = recent.iloc[[i % len(recent) for i in range(count)]]
    times = [at - pd.Timedelta(minutes=count - 1 - i) for i in range(count)]
    return pd.DataFrame(
        {
            "event_id": [f"burst-{origin}-{at:%Y%m%dT%H%M}-{i}" for i in range(count)],
            "event_timestamp": pd.to_datetime(times, utc=True),
            **{key: picks[key].astype("string").to_numpy() for key in KEYS},
            "delayed": True,
            "dep_delay": [min_delay + (7 * i) % 60 for i in range(count)],
        }
    )
