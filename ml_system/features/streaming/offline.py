"""Offline values of stream feature views: the events' Delta history through ``windows.offline_rows``.

The result is the view's own Delta table, so the point-in-time join, ``materialize`` and training
read a stream view like any other. The history is read whole and aggregated in pandas, per
entity: a view's events for one use case (the flights year is 336,776 events) fit one process
comfortably, and the aggregation must be the exact function serving runs (``windows.py``).
"""

from __future__ import annotations

from ml_system.errors import DefinitionError, StoreError
from ml_system.features.offline import OfflineStore
from ml_system.features.registry import Registry
from ml_system.features.streaming.views import StreamFeatureView
from ml_system.features.streaming.windows import offline_rows


def build_offline(registry: Registry, offline: OfflineStore, views: list[str] | None = None) -> dict[str, int]:
    """Recompute each stream view's table from its events' table; returns rows written per view."""
    registered = registry.feature_views()
    chosen = [v for v in registered.values() if isinstance(v, StreamFeatureView) and (not views or v.name in views)]
    unknown = sorted(set(views or []) - {v.name for v in chosen})
    if unknown:
        raise DefinitionError(f"no stream feature views named {unknown} are registered")
    written = {}
    for view in chosen:
        events = view.events
        assert events is not None
        if not offline.exists(events.table):
            raise StoreError(f"stream feature view '{view.name}': events table '{events.table}' does not exist")
        columns = [*view.join_keys, events.timestamp_field, events.event_id_field, *view.value_columns]
        have = set(offline.schema(events.table).names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise StoreError(f"stream feature view '{view.name}': events table '{events.table}' lacks {missing}")
        rows = offline_rows(view, offline.read_pandas(events.table, columns=columns))
        offline.write_pandas(view.source.table, rows, mode="overwrite")
        written[view.name] = len(rows)
    return written
