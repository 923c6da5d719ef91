"""Offline values of stream feature views: the events' Delta history through ``windows.offline_rows``, on the cluster.

The result is the view's own Delta table, so the point-in-time join, ``materialize`` and training
read a stream view like any other. Ray Data reads the events; their blocks are hash-partitioned
by the view's join keys (``partitioning.map_partitions``), so each entity's whole history meets
in one task, which runs the exact function serving runs (``windows.py``); the tasks' frames are
written back as one Delta commit. No row passes through the driver.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import ray

from ml_system.errors import DefinitionError, StoreError
from ml_system.features.offline import OfflineStore
from ml_system.features.partitioning import map_partitions
from ml_system.features.registry import Registry
from ml_system.features.streaming.views import StreamFeatureView
from ml_system.features.streaming.windows import offline_rows

PARTITIONS = 4


def _rows(view: StreamFeatureView, events: pd.DataFrame) -> pd.DataFrame:
    """One partition's rows, keys typed as the entity declares them (an empty part has no dtype) and
    times in microseconds (Delta readers refuse a table of nanosecond timestamps)."""
    rows = offline_rows(view, events)
    for column in ("event_timestamp", "created_timestamp"):
        rows[column] = rows[column].astype("datetime64[us, UTC]")
    for key, kind in zip(view.join_keys, view.key_types, strict=True):
        rows[key] = rows[key].astype("string" if kind == "string" else kind)
    return rows


def build_view(offline: OfflineStore, view: StreamFeatureView, partitions: int = PARTITIONS) -> tuple[int, int]:
    """Recompute one stream view's table from its events' table; returns (rows written, table version)."""
    events = view.events
    assert events is not None
    if not offline.exists(events.table):
        raise StoreError(f"stream feature view '{view.name}': events table '{events.table}' does not exist")
    columns = [*view.join_keys, events.timestamp_field, events.event_id_field, *view.value_columns]
    have = set(offline.schema(events.table).names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise StoreError(f"stream feature view '{view.name}': events table '{events.table}' lacks {missing}")
    blocks = offline.read_dataset(events.table, columns=columns).to_pandas_refs()
    refs = map_partitions(blocks, list(view.join_keys), partial(_rows, view), partitions)
    rows = ray.data.from_pandas_refs(refs).materialize()
    return rows.count(), offline.write_dataset(view.source.table, rows, mode="overwrite")


def build_offline(registry: Registry, offline: OfflineStore, views: list[str] | None = None) -> dict[str, int]:
    """Recompute each registered stream view's table (or those ``views`` names); returns rows written per view."""
    registered = registry.feature_views()
    chosen = [v for v in registered.values() if isinstance(v, StreamFeatureView) and (not views or v.name in views)]
    unknown = sorted(set(views or []) - {v.name for v in chosen})
    if unknown:
        raise DefinitionError(f"no stream feature views named {unknown} are registered")
    return {view.name: build_view(offline, view)[0] for view in chosen}
