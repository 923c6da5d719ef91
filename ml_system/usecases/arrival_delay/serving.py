"""Asked about the same flights as the flight-delay app; answers minutes of arrival delay."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ml_system.usecase import ServingSpec
from ml_system.usecases.flights.serving import Flight, entity_row, event_time


class ArrivalEstimate(BaseModel):
    carrier: str
    flight: int
    expected_arrival_delay_min: float


def respond(f: Flight, score: float, decision: bool | None) -> dict[str, Any]:
    return {"carrier": f.carrier, "flight": f.flight, "expected_arrival_delay_min": score}


SERVING = ServingSpec(
    request_item=Flight,
    response_item=ArrivalEstimate,
    items_field="flights",
    entity_row=entity_row,
    event_time=event_time,
    respond=respond,
    title="ml_system arrival delay",
    description="Expected arrival delay in minutes of a departure from New York (negative: early).",
)
