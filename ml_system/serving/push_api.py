"""``POST /push``: rows for a feature view over HTTP, checked against its schema, written by ``FeatureStore.push``.

The body is Feast's feature-server push, with rows as a list of objects rather than a column
frame (every validation error then names one row and one field):

    {"view": "carrier_stats", "rows": [{"carrier": "UA", "event_timestamp": "...", ...}],
     "to": "online"}

``to`` is ``online`` (Feast's default: the serving store only) or ``online_and_offline`` (appended
to the view's Delta table first, then online; the offline table's columns must match the rows).
Each row must hold exactly the view's join keys, its event timestamp and its features (the
created timestamp is optional); a wrong type is refused with the row and field named. Only the
team that owns the view (``FeatureView.team``) may push to it. The write is ``store.push``:
idempotent (the same rows retried append once: the key is a hash of the rows as sent), offline
first, then online into every snapshot a reader may be switched to.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict, create_model
from pydantic_core import to_json

from ml_system.config import PlatformConfig
from ml_system.errors import DefinitionError, MLSystemError, StoreUnavailableError
from ml_system.features import FeatureStore, FeatureView, Lifecycle
from ml_system.serving.http import HTTPProblem, parse_body
from ml_system.teams.access import Actor

MAX_PUSH_ROWS = 10_000
TO = Literal["online", "online_and_offline"]

_VALUE = {
    "float64": Annotated[float, Strict()],
    "float32": Annotated[float, Strict()],
    "int64": Annotated[int, Strict()],
    "int32": Annotated[int, Strict()],
    "string": Annotated[str, Strict()],
    "bool": Annotated[bool, Strict()],
    "timestamp": AwareDatetime,
}
_COLUMN = {
    "float64": "float64",
    "float32": "float32",
    "int64": "Int64",
    "int32": "Int32",
    "string": "object",
    "bool": "boolean",
}


class PushEnvelope(BaseModel):
    """What is read before the view is known: which view, where to."""

    view: str = Field(min_length=1)
    to: TO = "online"


def request_model(view: FeatureView) -> type[BaseModel]:
    """The whole body for ``view``: every key, timestamp and feature named, nothing else."""
    fields: dict[str, Any] = {}
    for key, kind in zip(view.join_keys, view.key_types, strict=True):
        fields[key] = (_VALUE[kind], ...)
    src = view.source
    fields[src.timestamp_field] = (AwareDatetime, ...)
    if src.created_timestamp_field:
        fields[src.created_timestamp_field] = (AwareDatetime | None, None)
    for f in view.schema:
        fields[f.name] = (_VALUE[f.dtype] | None, ...)  # null: a missing value, stored as one
    row = create_model(f"PushRow_{view.name}", __config__=ConfigDict(extra="forbid"), **fields)
    return create_model(
        f"Push_{view.name}",
        __config__=ConfigDict(extra="forbid"),
        view=(str, ...),
        to=(TO, "online"),
        rows=(list[row], Field(min_length=1, max_length=MAX_PUSH_ROWS)),  # type: ignore[valid-type]
    )


def rows_key(view: FeatureView, rows: list[BaseModel]) -> str:
    """The push's idempotency key: the rows as sent, so a retried request appends once even though a row
    without a created timestamp gets a new one each time."""
    digest = hashlib.sha256(view.name.encode())
    digest.update(to_json([r.model_dump(mode="json") for r in rows]))
    return digest.hexdigest()[:32]


def rows_frame(view: FeatureView, rows: list[BaseModel]) -> pd.DataFrame:
    """Validated rows as the frame ``store.push`` takes, typed per the view (the created time defaults to now)."""
    src = view.source
    data = [r.model_dump() for r in rows]
    frame: dict[str, Any] = {}
    for key, kind in zip(view.join_keys, view.key_types, strict=True):
        frame[key] = pd.Series([d[key] for d in data], dtype="int64" if kind != "string" else "object")
    frame[src.timestamp_field] = pd.to_datetime([d[src.timestamp_field] for d in data], utc=True)
    if src.created_timestamp_field:
        now = datetime.now(UTC)
        frame[src.created_timestamp_field] = pd.to_datetime(
            [d[src.created_timestamp_field] or now for d in data], utc=True
        )
    for f in view.schema:
        values = [d[f.name] for d in data]
        if f.dtype == "timestamp":
            frame[f.name] = pd.to_datetime(values, utc=True)
        else:
            frame[f.name] = pd.Series(values, dtype=_COLUMN[f.dtype])
    return pd.DataFrame(frame)


class PushRoute:
    """The route's work after the caller is known; one ``FeatureStore`` per replica, opened at the first push."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self._store: FeatureStore | None = None
        self._models: dict[str, tuple[FeatureView, type[BaseModel]]] = {}

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = FeatureStore(self.config)
        return self._store

    def _model(self, view: FeatureView) -> type[BaseModel]:
        cached = self._models.get(view.name)
        if cached is None or cached[0] != view:  # the view changed in the registry since
            cached = (view, request_model(view))
            self._models[view.name] = cached
        return cached[1]

    async def push(self, caller: Actor, body: bytes) -> dict[str, Any]:
        envelope = parse_body(PushEnvelope, body)  # extra keys are refused by the view's model below
        try:
            view = await asyncio.to_thread(self.store.registry.feature_view, envelope.view)
        except DefinitionError as exc:
            raise HTTPProblem(404, [{"loc": ["body", "view"], "msg": f"view: {exc}", "type": "not_found"}]) from None
        if view.lifecycle == Lifecycle.RETIRED:
            raise HTTPProblem(409, f"feature view '{view.name}' is retired; it takes no rows")
        if not view.team or view.team != caller.team:
            owner = f"team '{view.team}'" if view.team else "no team (set FeatureView.team)"
            raise HTTPProblem(403, f"feature view '{view.name}' belongs to {owner}; the key is of team '{caller.team}'")
        payload = parse_body(self._model(view), body)
        rows = payload.rows  # type: ignore[attr-defined]
        frame = rows_frame(view, rows)
        to_offline = envelope.to == "online_and_offline"
        try:
            written = await asyncio.to_thread(
                self.store.push, view.name, frame, to_offline, idempotency_key=rows_key(view, rows)
            )
        except StoreUnavailableError:
            raise
        except MLSystemError as exc:  # a row dated in the future, an offline table whose columns differ
            raise HTTPProblem(422, [{"loc": ["body", "rows"], "msg": f"rows: {exc}", "type": "value_error"}]) from None
        return {"view": view.name, "rows": len(frame), "entities_written": written, "to": envelope.to}
