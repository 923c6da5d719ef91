"""Broker entries to typed events, or a reason why not: nothing malformed reaches the window state.

A stream carries text (Redis Streams fields, Kafka JSON). An entry is checked against every view
it feeds (their join keys and value fields), so one bad field refuses the whole event with a
reason that names the field; the consumer parks it on the dead letter and carries on.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, NamedTuple

from ml_system.features.keys import normaliser
from ml_system.features.online.base import entity_key
from ml_system.features.streaming.views import StreamFeatureView


class DecodedEvent(NamedTuple):
    event_id: str
    ts: int
    """Nanoseconds since the epoch, UTC."""
    keys: tuple[str, ...]
    """The stored entity key of each view, in the order of the views the decoder was built for."""
    values: tuple[tuple[float | None, ...], ...]
    """Each view's value columns, in the same order."""


class EventError(ValueError):
    """An entry that does not match the declared events: the message is the dead-letter reason."""


_PARSE: dict[str, Any] = {
    "float64": float,
    "float32": float,
    "int64": int,
    "int32": int,
    "bool": lambda text: {"true": 1.0, "1": 1.0, "false": 0.0, "0": 0.0}[text.lower()],
}


def _unparsable(text: str) -> float:
    """A value field of a type no aggregation reads: every value of it is refused."""
    raise ValueError(text)


def parse_timestamp(text: str, field: str) -> int:
    """ISO 8601 with an offset (``2013-01-01T05:15:00+00:00`` or ``...Z``) to ns; naive times are refused."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise EventError(f"field '{field}': {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise EventError(f"field '{field}': {text!r} has no UTC offset (naive times are refused)")
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


class EventDecoder:
    """Built once per consumer for the views it feeds; ``decode`` runs per entry on the hot path."""

    def __init__(self, views: list[StreamFeatureView]) -> None:
        if not views:
            raise ValueError("an event decoder needs at least one stream feature view")
        first = views[0].events
        assert first is not None
        self.ts_field, self.id_field = first.timestamp_field, first.event_id_field
        self.dtypes: dict[str, str] = {}
        for view in views:
            assert view.events is not None
            self.dtypes.update(view.events.dtypes)
        self._keys = [
            [(k, normaliser(kind, v.name, k)) for k, kind in zip(v.join_keys, v.key_types, strict=True)] for v in views
        ]
        columns: list[str] = []
        for view in views:
            columns += [c for c in view.value_columns if c not in columns]
        self._parsers = [(c, _PARSE.get(self.dtypes[c], _unparsable), self.dtypes[c]) for c in columns]
        """Each value field once, however many views read it; its parser and declared type."""
        self._picks = [tuple(columns.index(c) for c in v.value_columns) for v in views]
        self._times: dict[str, int] = {}

    def decode(self, fields: dict[str, str]) -> DecodedEvent:
        if "json" in fields and len(fields) == 1:  # Kafka-style single JSON document
            fields = _json_fields(fields["json"])
        event_id = fields.get(self.id_field)
        if not event_id:
            raise EventError(f"field '{self.id_field}' is missing or empty")
        if "\0" in event_id:  # the window state separates the ids it holds with NUL
            raise EventError(f"field '{self.id_field}' holds a NUL character")
        text = fields.get(self.ts_field)
        if not text:
            raise EventError(f"field '{self.ts_field}' is missing or empty")
        ts = self._times.get(text)
        if ts is None:  # events of one moment share their text: parse it once
            if len(self._times) > 100_000:
                self._times.clear()
            ts = self._times[text] = parse_timestamp(text, self.ts_field)
        keys: list[str] = []
        for pairs in self._keys:
            parts: list[str] = []
            for key, norm in pairs:
                raw = fields.get(key)
                if raw is None or raw == "":
                    raise EventError(f"join key '{key}' is missing or empty")
                try:
                    parts.append(norm(raw))
                except Exception as exc:  # noqa: BLE001 - the normaliser's reason goes to the dead letter
                    raise EventError(f"join key '{key}': {exc}") from None
            keys.append(parts[0] if len(parts) == 1 else entity_key(parts))
        parsed: list[float | None] = []
        for column, parse, kind in self._parsers:
            raw = fields.get(column)
            if raw is None:
                raise EventError(f"field '{column}' is missing (send it empty for a missing value)")
            if raw == "":
                parsed.append(None)
                continue
            try:
                number = float(parse(raw))
            except (ValueError, KeyError):
                raise EventError(f"field '{column}': {raw!r} is not {kind}") from None
            if number != number:  # NaN: a missing value
                parsed.append(None)
            elif math.isinf(number):
                raise EventError(f"field '{column}': {raw!r} is not finite")
            else:
                parsed.append(number)
        values = tuple([tuple([parsed[i] for i in pick]) for pick in self._picks])
        return DecodedEvent(event_id, ts, tuple(keys), values)


def _json_fields(text: str) -> dict[str, str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(f"not a JSON document: {exc.msg}") from None
    if not isinstance(document, dict):
        raise EventError("a JSON event must be an object")
    return {k: "" if v is None else v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}
