"""Push and delete: fresh rows (a stream, a correction) written offline and online, safely.

Order and retries: a push appends offline first, then writes online. Each push has
an idempotency key (by default a hash of its rows) recorded in the Delta commit as
an application transaction (``txn``: Delta's own mechanism for idempotent writes,
checked from the table's snapshot, no log scan), so a retry finds its commit and
skips the append; the online write is an upsert-if-newer and repeats harmlessly.
A push that died between the two is therefore completed by retrying it, and a
retried push never duplicates Delta rows.

Snapshots: rows go into every namespace a reader may be switched to (the active
one, rollback targets, and loads still loading or ready), so a push made while a
snapshot loads survives its activation. Rows dated more than
``features.max_future_skew_s`` past now are refused: such a row would win every
later upsert for its key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ml_system.errors import EntityDataError
from ml_system.features import snapshots
from ml_system.features.definitions import FeatureView
from ml_system.features.keys import request_keys
from ml_system.features.materialize import latest_rows
from ml_system.features.offline_store import OfflineStore
from ml_system.features.online.base import OnlineStore
from ml_system.features.pit_join import timestamps_ns


def push_id(rows: pd.DataFrame) -> str:
    """A hash of a frame's columns, dtypes and values: the same rows retried give the same id."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in rows.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def _check_columns(view: FeatureView, rows: pd.DataFrame) -> None:
    need = [*view.join_keys, view.source.timestamp_field, *view.feature_names]
    missing = [c for c in need if c not in rows.columns]
    if missing:
        raise EntityDataError(f"push to feature view '{view.name}': rows lack columns {missing}")


def refuse_future(view: FeatureView, rows: pd.DataFrame, max_skew_s: float, now: datetime | None = None) -> None:
    """Refuse rows whose event time lies more than ``max_skew_s`` past ``now``, naming the first one."""
    field = view.source.timestamp_field
    stamps = timestamps_ns(rows[field], field)
    moment = now or datetime.now(UTC)
    limit = int(pd.Timestamp(moment).value) + int(max_skew_s * 1e9)
    late = np.flatnonzero(stamps > limit)
    if late.size:
        i = int(late[0])
        key = {k: v.item() if isinstance(v := rows[k].iloc[i], np.generic) else v for k in view.join_keys}
        when = pd.Timestamp(int(stamps[i]), tz="UTC").isoformat()
        raise EntityDataError(
            f"push to feature view '{view.name}': row {rows.index[i]!r} {key} has {field} {when}, more than "
            f"{max_skew_s:g} s past now ({moment.isoformat()}); refused, since it would win every later update "
            f"of its key ({late.size} such rows; features.max_future_skew_s sets the bound)"
        )


def push(
    online: OnlineStore,
    offline: OfflineStore,
    view: FeatureView,
    rows: pd.DataFrame,
    *,
    to_offline: bool,
    idempotency_key: str | None,
    max_future_skew_s: float,
) -> int:
    """Validate everything, append offline once, then upsert online into every switchable namespace."""
    _check_columns(view, rows)
    refuse_future(view, rows, max_future_skew_s)
    latest = latest_rows(rows, view)  # keys normalised by type here: a bad key fails before anything is written
    if to_offline:
        offline.append_once(view.source.table, rows, f"mlsys-push:{view.name}:{idempotency_key or push_id(rows)}")
    for namespace in snapshots.write_targets(online):
        online.write_batch(view.name, latest, namespace, fields=view.feature_names)
    return len(latest)


def delete(online: OnlineStore, view: FeatureView, entity_rows: list[dict[str, Any]]) -> int:
    """Delete entities' online rows from every switchable namespace; returns how many the active one had."""
    keys = request_keys(view, entity_rows)
    keys = [k for k in keys if k]
    removed = 0
    for n, namespace in enumerate(snapshots.write_targets(online)):
        count = online.delete(view.name, keys, namespace)
        if n == 0:
            removed = count
    return removed
