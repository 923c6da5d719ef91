"""Its own feature service over the views the flights use case registers (and builds)."""

from ml_system.features import FeatureService
from ml_system.usecases.flights.features import DEFINITIONS as FLIGHT_DEFINITIONS
from ml_system.usecases.flights.features import (
    carrier_stats,
    flight_time,
    origin_stats,
    planes,
    route_stats,
    weather,
)

arrival_delay_service = FeatureService(
    name="arrival_delay_v1",
    features=[
        f"{v.name}:{f}"
        for v in (weather, planes, carrier_stats, origin_stats, route_stats, flight_time)
        for f in v.feature_names
    ],
    description="Features of the arrival-delay regression",
    owner="arrival-delay-team",
)

# the reused views come along so that applying this use case alone registers what its service reads
DEFINITIONS = [d for d in FLIGHT_DEFINITIONS if d.name != "flight_delay_v1"] + [arrival_delay_service]
