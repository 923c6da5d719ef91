"""Online data rollout: load a snapshot beside the served data, switch, roll back.

A snapshot is a namespace of the online store filled by a full
materialization. Activating it is one atomic meta write (the pointer and the
stack of previously active ids together); readers resolve the pointer once per
request, so each answer comes wholly from one snapshot. The previously active
namespace is kept, which makes rollback a pointer write too.

The bookkeeping lives in the online store's own meta values rather than in the
registry: it must change atomically with what readers see, and only the online
store can promise that.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from ml_system.errors import StoreError
from ml_system.features.online.base import ACTIVE_SNAPSHOT, BASE, OnlineStore

HISTORY = "snapshot:history"
CATALOG = "snapshot:catalog"


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    created_at: str
    end: str
    state: str  # loading | ready | failed
    active: bool


def new_snapshot_id() -> str:
    return datetime.now(UTC).strftime("s%Y%m%d%H%M%S") + secrets.token_hex(3)


def _catalog(online: OnlineStore) -> dict[str, dict[str, str]]:
    return json.loads(online.get_meta(CATALOG) or "{}")


def _history(online: OnlineStore) -> list[str]:
    return json.loads(online.get_meta(HISTORY) or "[]")


def record(online: OnlineStore, snapshot: str, end: str, state: str) -> None:
    catalog = _catalog(online)
    entry = catalog.setdefault(snapshot, {"created_at": datetime.now(UTC).isoformat(), "end": end})
    entry["state"] = state
    online.set_meta(CATALOG, json.dumps(catalog, sort_keys=True))


def activate(online: OnlineStore, snapshot: str) -> str:
    """Point readers at ``snapshot``; returns the id that was active before."""
    state = _catalog(online).get(snapshot, {}).get("state")
    if snapshot != BASE and state != "ready":
        raise StoreError(f"snapshot '{snapshot}' is {state or 'unknown'}, not ready; load it first")
    current = online.active_snapshot()
    if current == snapshot:
        return current
    history = [*_history(online), current]
    online.set_meta_many({ACTIVE_SNAPSHOT: snapshot, HISTORY: json.dumps(history)})
    return current


def rollback(online: OnlineStore) -> str:
    """Point readers back at the previously active snapshot; returns its id."""
    history = _history(online)
    if not history:
        raise StoreError("no earlier snapshot to roll back to")
    previous = history.pop()
    online.set_meta_many({ACTIVE_SNAPSHOT: previous, HISTORY: json.dumps(history)})
    return previous


def listing(online: OnlineStore) -> list[SnapshotInfo]:
    active = online.active_snapshot()
    out = [SnapshotInfo(BASE, "", "", "ready", active == BASE)]
    for sid, entry in sorted(_catalog(online).items()):
        out.append(SnapshotInfo(sid, entry["created_at"], entry["end"], entry["state"], active == sid))
    return out


def drop(online: OnlineStore, snapshot: str) -> None:
    """Delete a snapshot that neither serves nor is a rollback target."""
    if snapshot == online.active_snapshot() or snapshot in _history(online):
        raise StoreError(f"snapshot '{snapshot}' is active or a rollback target; it cannot be dropped")
    online.drop_snapshot(snapshot)
    catalog = _catalog(online)
    catalog.pop(snapshot, None)
    online.set_meta(CATALOG, json.dumps(catalog, sort_keys=True))
