"""What the flight-delay app asks and answers; the platform's generic serving does the rest.

Unknown airports, tail numbers or carriers are not errors: the flight is scored with those
features missing (XGBoost's learned default branch) and the answer lists the affected views.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from ml_system.usecase import ServingSpec


class Flight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", examples=["UA"])
    flight: int = Field(ge=1, le=9999, examples=[1545])
    tailnum: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,8}$", examples=["N14228"])
    origin: str = Field(pattern=r"^[A-Z]{3}$", examples=["EWR"])
    dest: str = Field(pattern=r"^[A-Z]{3}$", examples=["IAH"])
    sched_dep_time: AwareDatetime = Field(
        description="Scheduled departure with its UTC offset, years 1900-2199, e.g. 2013-12-31T18:30:00-05:00",
        examples=["2013-12-31T18:30:00-05:00"],
        json_schema_extra={"pattern": r"^(19|20|21)[0-9]{2}-"},
    )

    @field_validator("sched_dep_time", mode="before")
    @classmethod
    def _a_text_time(cls, value: object) -> object:
        # what the document says and nothing else: pydantic would also take epoch seconds here
        if isinstance(value, (int, float)):
            raise ValueError("give the time as an ISO-8601 string with its UTC offset, not a number")
        return value

    @field_validator("flight", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        # ... and "123" or true here
        if isinstance(value, (str, bool)):
            raise ValueError("give the flight number as a JSON number")
        return value

    @field_validator("sched_dep_time")
    @classmethod
    def _schedulable(cls, value: datetime) -> datetime:
        if not 1900 <= value.year <= 2199:
            raise ValueError("a departure must be scheduled in the years 1900-2199")
        return value


class Prediction(BaseModel):
    carrier: str
    flight: int
    delay_probability: float
    delayed: bool


def entity_row(f: Flight) -> dict[str, Any]:
    return {
        "origin": f.origin,
        "tailnum": f.tailnum or "",
        "carrier": f.carrier,
        "route": f"{f.origin}-{f.dest}",
        "sched_dep_time": f.sched_dep_time,
    }


def event_time(f: Flight) -> datetime:
    return f.sched_dep_time


def respond(f: Flight, score: float, decision: bool | None) -> dict[str, Any]:
    return {"carrier": f.carrier, "flight": f.flight, "delay_probability": score, "delayed": decision}


SERVING = ServingSpec(
    request_item=Flight,
    response_item=Prediction,
    items_field="flights",
    entity_row=entity_row,
    event_time=event_time,
    respond=respond,
    title="ml_system flight delay",
    description="Probability that a departure from New York is more than 15 minutes late.",
)
