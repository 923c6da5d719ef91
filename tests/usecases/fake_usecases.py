"""Use cases that break the contract on purpose, named in a test's use-case table."""

from __future__ import annotations

import dataclasses

from ml_system.usecase import UseCase
from ml_system.usecases.flights import usecase as flights

incomplete = UseCase(name="incomplete", model_name="incomplete_model", definitions=flights.definitions)
same_route = dataclasses.replace(flights, name="same_route", model_name="another_model")
same_model = dataclasses.replace(flights, name="same_model", route_prefix="/elsewhere")
misnamed = dataclasses.replace(flights, name="not_what_the_table_says", model_name="m3", route_prefix="/m3")
not_a_usecase = {"name": "dict"}
