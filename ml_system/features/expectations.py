"""What a source table promises: expectations kept with the feature definitions of a use case.

A feature view says which columns it reads; an expectation says what good data in its source
table looks like (dtype, null rate, value range, row count, freshness). They are declared in
Python beside the definitions (``UseCase.expectations``) rather than in a view's string tags:
a range or a duration in a tag would be parsed by hand and typo'd silently, and a raw table that
no view reads directly (the flights the trailing rates are computed from) still needs them. The
pipelines' validation step turns them into pandera schemas; this module has no dependency, so
use cases can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ml_system.errors import DefinitionError

Kind = Literal["float", "int", "string", "bool", "timestamp"]


@dataclass(frozen=True)
class ColumnExpectation:
    """One column: its kind, how many nulls it may hold, the range its values lie in."""

    kind: Kind = "float"
    max_null_fraction: float = 0.0
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_null_fraction <= 1.0:
            raise DefinitionError(f"max_null_fraction {self.max_null_fraction} is not between 0 and 1")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise DefinitionError(f"min_value {self.min_value} is above max_value {self.max_value}")


@dataclass(frozen=True)
class TableExpectations:
    """A Delta table of the offline store, checked before training reads it.

    ``timestamp_field`` dates the rows: a run as of a moment checks only rows not after it,
    ``window`` narrows row checks to the newest rows before that moment (the latest batches, whose
    problems a year of good history would otherwise dilute), ``min_rows`` counts the rows checked,
    and ``max_staleness`` bounds how old the newest row may be at that moment.
    """

    table: str
    timestamp_field: str
    columns: dict[str, ColumnExpectation] = field(default_factory=dict)
    min_rows: int = 1
    max_staleness: timedelta | None = None
    window: timedelta | None = None

    def __post_init__(self) -> None:
        if self.min_rows < 0:
            raise DefinitionError(f"expectations of '{self.table}': min_rows must not be negative")
        for name, value in (("max_staleness", self.max_staleness), ("window", self.window)):
            if value is not None and value <= timedelta(0):
                raise DefinitionError(f"expectations of '{self.table}': {name} must be positive")

    def to_dict(self) -> dict[str, Any]:
        """A stable, JSON-able form: what the validation step's cache key and report are made of."""
        return {
            "table": self.table,
            "timestamp_field": self.timestamp_field,
            "columns": {name: vars(col) for name, col in sorted(self.columns.items())},
            "min_rows": self.min_rows,
            "max_staleness_s": None if self.max_staleness is None else self.max_staleness.total_seconds(),
            "window_s": None if self.window is None else self.window.total_seconds(),
        }
