"""Online feature reads: resolved once, read many times (serving replicas keep one reader).

Reading the registry or parsing references per request would cost more than the
lookup itself, so the reader resolves its views, key builders and layouts when it
is made. Stored rows carry the layout (field names) they were written under; a row
written under the reader's own layout is taken by position (a 9-byte compare per
row), any other is re-aligned by name, a field it lacks reading as missing. So a
schema change (fields reordered, added or removed) never serves one field's value
under another's name, and never fails a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from ml_system.errors import EntityDataError
from ml_system.features.definitions import FeatureView, OnDemandFeatureView, group_refs
from ml_system.features.keys import key_builder
from ml_system.features.online import FeatureStatus, OnlineRow, OnlineStore
from ml_system.features.online.codec import LEGACY, layout_id

log = logging.getLogger(__name__)


@dataclass
class OnlineFeatures:
    """Column-oriented answer: ``values[name][i]`` and ``statuses[name][i]`` for entity row i."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    statuses: dict[str, list[FeatureStatus]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list[Any]]:
        return dict(self.values)


PRESENT, NOT_FOUND, EXPIRED = FeatureStatus.PRESENT, FeatureStatus.NOT_FOUND, FeatureStatus.EXPIRED
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1) * 1000


def _epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch; datetime arithmetic, several times cheaper than ``pd.Timestamp``."""
    if isinstance(moment, pd.Timestamp) or moment.tzinfo is None:
        return int(pd.Timestamp(moment).value)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _statuses(rows: list[OnlineRow | None], ttl_ns: int | None, clocks: list[int]) -> list[FeatureStatus]:
    """One status per row: missing, present, or older than the view's TTL at that row's clock."""
    if ttl_ns is None:
        return [NOT_FOUND if row is None else PRESENT for row in rows]
    return [
        NOT_FOUND if row is None else (PRESENT if row.event_ts > clock - ttl_ns else EXPIRED)
        for row, clock in zip(rows, clocks, strict=True)
    ]


def _failing_row(row_fn: Any, inputs: tuple[str, ...], entity_rows: list[dict[str, Any]]) -> int:
    for i, row in enumerate(entity_rows):
        try:
            row_fn(*[row[k] for k in inputs])
        except (ArithmeticError, ValueError):
            return i
    return 0


class OnlineFeatureReader:
    def __init__(
        self,
        store: OnlineStore,
        views: dict[str, FeatureView],
        refs: list[str] | tuple[str, ...],
        ondemand: dict[str, OnDemandFeatureView] | None = None,
    ) -> None:
        self.store = store
        ondemand = ondemand or {}
        grouped = group_refs(list(refs), {**views, **ondemand})
        self.plan: list[tuple[FeatureView, list[tuple[str, int]]]] = []
        self.ondemand_plan: list[tuple[OnDemandFeatureView, list[tuple[str, int]]]] = []
        for view_name, feats in grouped.items():
            if view_name in ondemand:
                odfv = ondemand[view_name]
                self.ondemand_plan.append((odfv, [(f, odfv.feature_names.index(f)) for f in feats]))
                continue
            view = views[view_name]
            names = list(view.feature_names)
            self.plan.append((view, [(f, names.index(f)) for f in feats]))
        self.feature_names = [f for _, feats in self.plan for f, _ in feats]
        self.feature_names += [f for _, feats in self.ondemand_plan for f, _ in feats]
        self._ondemand_steps = [
            (odfv.name, odfv.input_names, odfv.row_function(), feats) for odfv, feats in self.ondemand_plan
        ]
        # what read() needs, computed once: property lookups and timedelta maths cost microseconds each
        self._steps = [
            (
                view.name,
                key_builder(view),
                None if view.ttl is None else _ns(view.ttl),
                feats,
                layout_id(view.feature_names),
                view.feature_names,
            )
            for view, feats in self.plan
        ]
        self._alignments: dict[tuple[str, bytes], tuple[list[int | None], int] | None] = {}

    def required_keys(self) -> list[str]:
        """Join keys of the stored views, then the request fields of the on-demand ones."""
        keys: list[str] = []
        for view, _ in self.plan:
            keys.extend(k for k in view.join_keys if k not in keys)
        for odfv, _ in self.ondemand_plan:
            keys.extend(k for k in odfv.input_names if k not in keys)
        return keys

    def _ondemand(self, entity_rows: list[dict[str, Any]], out: OnlineFeatures) -> None:
        """Computed per row with the view's row function: present whenever the request holds its inputs."""
        n = len(entity_rows)
        for view_name, inputs, row_fn, feats in self._ondemand_steps:
            try:
                results = [row_fn(*[row[k] for k in inputs]) for row in entity_rows]
            except KeyError as exc:
                raise EntityDataError(
                    f"entity rows lack input '{exc.args[0]}' needed by on-demand feature view '{view_name}'"
                ) from None
            except (ArithmeticError, ValueError) as exc:  # the request's own values: say which row
                raise EntityDataError(
                    f"entity row {_failing_row(row_fn, inputs, entity_rows)}: on-demand feature view "
                    f"'{view_name}' cannot compute from it: {type(exc).__name__}: {exc}"
                ) from None
            columns = list(zip(*results, strict=True))
            statuses = [PRESENT] * n
            for name, idx in feats:
                out.values[name] = list(columns[idx])
                out.statuses[name] = statuses.copy()

    def read(self, entity_rows: list[dict[str, Any]], now: datetime | list[datetime] | None = None) -> OnlineFeatures:
        """One store round trip for all views; statuses are decided once per row and view, not per value."""
        n = len(entity_rows)
        if isinstance(now, list):
            clocks = [_epoch_ns(t) for t in now]
        else:
            clocks = [_epoch_ns(now or datetime.now(UTC))] * n
        out = OnlineFeatures()
        requests: list[tuple[str, list[str]]] = []
        for view_name, build_keys, _, _, _, _ in self._steps:
            try:
                requests.append((view_name, build_keys(entity_rows)))
            except KeyError as exc:
                missing = next(i for i, row in enumerate(entity_rows) if exc.args[0] not in row)
                raise EntityDataError(
                    f"entity row {missing} lacks join key '{exc.args[0]}' needed by view '{view_name}'"
                ) from None
        # every view from the one snapshot active now (Redis: pointer and all views in one round trip)
        answers = self.store.read_views(requests) if requests else []
        for (view_name, _, ttl_ns, feats, layout, fields), rows in zip(self._steps, answers, strict=True):
            absent: dict[int, list[int]] = {}  # field index -> rows whose layout lacks that field
            statuses = _statuses(rows, ttl_ns, clocks)
            columns: list[tuple[Any, ...]] | None = None
            if n and statuses.count(PRESENT) == n:
                # the common case, all in C: transpose whole rows, check every layout is ours, transpose values
                _, _, values, layouts = zip(*rows, strict=True)  # type: ignore[misc]
                if layouts.count(layout) == n:
                    columns = list(zip(*values, strict=True))
            if columns is None:
                if any(row is not None and row.layout != layout for row in rows):
                    rows = self._align(view_name, layout, fields, rows, absent)
                    statuses = _statuses(rows, ttl_ns, clocks)
                blank = [None] * len(fields)
                shown = [row.values if s is PRESENT else blank for row, s in zip(rows, statuses, strict=True)]  # type: ignore[union-attr]
                columns = list(zip(*shown, strict=True))
            for name, idx in feats:
                out.values[name] = list(columns[idx]) if columns else [None] * n
                out.statuses[name] = statuses.copy()
                for i in absent.get(idx, ()):
                    out.statuses[name][i] = NOT_FOUND
        if self._ondemand_steps:
            self._ondemand(entity_rows, out)
        return out

    def _align(
        self,
        view: str,
        layout: bytes,
        fields: tuple[str, ...],
        rows: list[OnlineRow | None],
        absent: dict[int, list[int]],
    ) -> list[OnlineRow | None]:
        """Rows written under other layouts, re-ordered by name into this reader's.

        A field the row's layout lacks reads None with status ``NOT_FOUND`` (noted in ``absent``).
        """
        out: list[OnlineRow | None] = []
        for n, row in enumerate(rows):
            if row is None or row.layout == layout:
                out.append(row)
                continue
            alignment = self._alignment(view, row.layout, fields)
            values = row.values
            if alignment is None or len(values) != alignment[1]:
                out.append(None)  # an unknown layout, or a row that does not match its own: missing, never misread
                continue
            index = alignment[0]
            for f, i in enumerate(index):
                if i is None:
                    absent.setdefault(f, []).append(n)
            aligned = [None if i is None else values[i] for i in index]
            out.append(OnlineRow(row.event_ts, row.created_ts, aligned, layout))
        return out

    def _alignment(self, view: str, stored: bytes, fields: tuple[str, ...]) -> tuple[list[int | None], int] | None:
        """For each of this reader's fields, its position in rows of layout ``stored`` (and their width).

        Rows older than layouts (``LEGACY``) take the field list recorded for them when the view's
        schema first changed, or, if it never did, this reader's own: that is the schema they were
        written with. A layout once recorded never changes, so caching it per reader is safe.
        """
        key = (view, stored)
        if key in self._alignments:
            return self._alignments[key]
        names = self.store.layout_fields(view, stored)
        if names is None and stored == LEGACY:
            names = fields
        if names is None:
            log.warning("view '%s': rows with unknown layout %s read as missing", view, stored.decode())
            alignment = None
        else:
            position = {name: i for i, name in enumerate(names)}
            alignment = ([position.get(f) for f in fields], len(names))
        self._alignments[key] = alignment
        return alignment
