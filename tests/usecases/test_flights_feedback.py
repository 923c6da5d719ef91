"""The rollouts' feedback source: served flights get their real outcome from the flights data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml_system.config import PlatformConfig
from ml_system.usecases.flights.demo import demo_flights, flights_from_frame
from ml_system.usecases.flights.feedback import arrivals_feedback, departures_feedback
from ml_system.usecases.flights.serving import Flight, entity_row

pytestmark = [pytest.mark.integration]


def test_served_flights_are_labelled_with_their_real_departure_and_arrival(served_home: PlatformConfig) -> None:
    frame = demo_flights(served_home)
    items = flights_from_frame(frame)
    logged = pd.DataFrame({"entity": [json.dumps(entity_row(Flight(**i)), sort_keys=True, default=str) for i in items]})
    unknown = pd.DataFrame({"entity": [json.dumps({**json.loads(logged["entity"][0]), "tailnum": "N00000"})]})
    logged = pd.concat([logged, unknown], ignore_index=True)
    late = departures_feedback(served_home, logged)
    arrival = arrivals_feedback(served_home, logged)
    expected_late = np.where(frame["dep_delay"].isna(), np.nan, (frame["dep_delay"] > 15).astype(float))
    np.testing.assert_array_equal(late.to_numpy()[:-1], expected_late)
    np.testing.assert_array_equal(arrival.to_numpy()[:-1], frame["arr_delay"].to_numpy(dtype=float))
    assert np.isnan(late.iloc[-1]) and np.isnan(arrival.iloc[-1])  # a flight that never flew has no label
