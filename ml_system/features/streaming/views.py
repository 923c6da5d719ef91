"""Stream feature views: windowed aggregations over events, declared once for training and serving.

A ``StreamFeatureView`` is a ``FeatureView`` whose schema and source follow from its
aggregations: the registry, the point-in-time join, the online reader and ``push`` see an ordinary
view, while ``windows.py`` computes its rows, from the events' Delta table for training and
incrementally from the broker for serving, with the same function.

Semantics, the same on both paths: at an entity's event time ``t`` a time window of width ``w``
aggregates the entity's events with ``t - w < event_timestamp <= t``, and ``last_n`` its ``n``
latest events up to ``t`` (ties in time ordered by event id). A row is produced at each of the
entity's event times and holds until its next event, as the point-in-time join reads rows;
``ttl`` bounds how long a quiet entity's row is served. Events older than ``allowed_lateness``
behind their entity's newest are refused online (dead-lettered with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ml_system.errors import DefinitionError
from ml_system.features.definitions import DeltaSource, Entity, FeatureView, Field, Lifecycle, check_name

FUNCTIONS = ("count", "sum", "mean", "max", "min")
_NUMERIC = ("float64", "float32", "int64", "int32", "bool")


def duration_label(window: timedelta) -> str:
    """``1h``, ``90m``, ``30s``, ``2d``: the largest unit that divides the window."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Aggregation:
    """``function`` of ``column`` over a sliding time ``window`` or over the ``last_n`` events of an entity."""

    column: str
    function: str
    window: timedelta | None = None
    last_n: int | None = None
    name: str = ""
    """Feature name (default ``<column>_<function>_<1h|last20>``)."""

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise DefinitionError(
                f"aggregation of '{self.column}': function '{self.function}' is not one of {FUNCTIONS}"
            )
        if (self.window is None) == (self.last_n is None):
            raise DefinitionError(f"aggregation of '{self.column}': give exactly one of window= or last_n=")
        if self.window is not None and (self.window <= timedelta(0) or self.window % timedelta(seconds=1)):
            raise DefinitionError(f"aggregation of '{self.column}': window must be a positive whole number of seconds")
        if self.last_n is not None and self.last_n < 1:
            raise DefinitionError(f"aggregation of '{self.column}': last_n must be at least 1")
        if not self.name:
            span = f"last{self.last_n}" if self.window is None else duration_label(self.window)
            object.__setattr__(self, "name", f"{self.column}_{self.function}_{span}")
        check_name("aggregation", self.name)

    @property
    def dtype(self) -> str:
        return "int64" if self.function == "count" else "float64"

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "function": self.function,
            "window_seconds": None if self.window is None else self.window.total_seconds(),
            "last_n": self.last_n,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aggregation:
        window = data.get("window_seconds")
        return cls(
            data["column"],
            data["function"],
            None if window is None else timedelta(seconds=window),
            data.get("last_n"),
            data.get("name", ""),
        )


@dataclass(frozen=True)
class EventSource:
    """The events a stream feature view aggregates: their value fields, id and time, and where their history lives.

    ``table``: the Delta table of past events (training reads it); ``stream``: the broker stream or
    topic they arrive on (empty: the one ``streaming.stream`` names).
    """

    name: str
    schema: tuple[Field, ...]
    table: str
    timestamp_field: str = "event_timestamp"
    event_id_field: str = "event_id"
    stream: str = ""

    def __post_init__(self) -> None:
        check_name("event source", self.name)
        check_name("offline table", self.table)
        object.__setattr__(self, "schema", tuple(self.schema))

    @property
    def dtypes(self) -> dict[str, str]:
        return {f.name: f.dtype for f in self.schema}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schema": [{"name": f.name, "dtype": f.dtype} for f in self.schema],
            "table": self.table,
            "timestamp_field": self.timestamp_field,
            "event_id_field": self.event_id_field,
            "stream": self.stream,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventSource:
        return cls(**{**data, "schema": tuple(Field(**f) for f in data["schema"])})


@dataclass(frozen=True, init=False)
class StreamFeatureView(FeatureView):
    events: EventSource | None = None
    aggregations: tuple[Aggregation, ...] = ()
    allowed_lateness: timedelta = timedelta(0)

    def __init__(
        self,
        name: str,
        entities: Any,
        events: EventSource,
        aggregations: Any,
        allowed_lateness: timedelta = timedelta(0),
        ttl: timedelta | None = None,
        table: str = "",
        owner: str = "",
        description: str = "",
        tags: dict[str, str] | None = None,
        lifecycle: Lifecycle | None = None,
        team: str = "",
    ) -> None:
        aggregations = tuple(aggregations)
        what = f"stream feature view '{name}'"
        if not aggregations:
            raise DefinitionError(f"{what}: needs at least one aggregation")
        kinds = events.dtypes
        for agg in aggregations:
            if agg.column not in kinds:
                raise DefinitionError(
                    f"{what}: aggregation column '{agg.column}' is not a field of events '{events.name}'"
                )
            if kinds[agg.column] not in _NUMERIC:
                raise DefinitionError(f"{what}: aggregation column '{agg.column}' is {kinds[agg.column]}, not numeric")
        if allowed_lateness < timedelta(0):
            raise DefinitionError(f"{what}: allowed_lateness must not be negative")
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "aggregations", aggregations)
        object.__setattr__(self, "allowed_lateness", allowed_lateness)
        FeatureView.__init__(
            self,
            name=name,
            entities=tuple(entities),
            schema=tuple(Field(a.name, a.dtype) for a in aggregations),
            source=DeltaSource(table=table or name),
            ttl=ttl,
            owner=owner,
            description=description,
            tags=dict(tags or {}),
            lifecycle=lifecycle,
            team=team,
        )
        clash = set(self.join_keys) & {events.timestamp_field, events.event_id_field, *kinds}
        if clash:
            raise DefinitionError(f"{what}: event fields {sorted(clash)} shadow join keys")

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The event fields the aggregations read, in first-use order."""
        seen: list[str] = []
        for agg in self.aggregations:
            if agg.column not in seen:
                seen.append(agg.column)
        return tuple(seen)

    @property
    def state_horizon(self) -> timedelta:
        """How far behind an entity's newest event its events still matter to a time window."""
        return max((a.window for a in self.aggregations if a.window is not None), default=timedelta(0))

    @property
    def keep_last(self) -> int:
        return max((a.last_n or 0 for a in self.aggregations), default=0)

    def stream_dict(self) -> dict[str, Any]:
        """What the registry records besides the plain view (whose schema and source follow from this)."""
        assert self.events is not None
        return {
            "events": self.events.to_dict(),
            "aggregations": [a.to_dict() for a in self.aggregations],
            "allowed_lateness_seconds": self.allowed_lateness.total_seconds(),
            "table": self.source.table,
        }

    @classmethod
    def from_registry(cls, view: FeatureView, stream: dict[str, Any]) -> StreamFeatureView:
        return cls(
            name=view.name,
            entities=view.entities,
            events=EventSource.from_dict(stream["events"]),
            aggregations=[Aggregation.from_dict(a) for a in stream["aggregations"]],
            allowed_lateness=timedelta(seconds=stream["allowed_lateness_seconds"]),
            ttl=view.ttl,
            table=stream["table"],
            owner=view.owner,
            description=view.description,
            tags=view.tags,
            lifecycle=view.lifecycle,
            team=view.team,
        )


def stream_views(views: dict[str, FeatureView], stream: str, names: list[str] | None = None) -> list[StreamFeatureView]:
    """The registered stream views fed from ``stream`` (or those ``names`` lists), refusing unknown names."""
    found = {n: v for n, v in views.items() if isinstance(v, StreamFeatureView)}
    if names:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise DefinitionError(f"no stream feature views named {unknown} are registered (have {sorted(found)})")
        return [found[n] for n in names]
    return [v for v in found.values() if v.events is not None and v.events.stream in ("", stream)]


__all__ = ["Aggregation", "Entity", "EventSource", "StreamFeatureView", "duration_label", "stream_views"]
