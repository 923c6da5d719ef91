"""Online data rollout: load a snapshot beside the served data, switch, roll back, reclaim.

A snapshot is a namespace of the online store filled by a full
materialization. Activating it is one atomic meta update (the pointer, the
stack of previously active ids and the catalog together); readers resolve the
pointer once per request, so each answer comes wholly from one snapshot. The
previously active namespace is kept, which makes rollback a pointer write too.

The bookkeeping lives in the online store's own meta values rather than in the
registry: it must change atomically with what readers see, and only the online
store can promise that. Every change is a read-modify-write inside one
``OnlineStore.update_meta`` (a SQLite ``BEGIN IMMEDIATE`` transaction, a Redis
``WATCH``/``MULTI``), so concurrent operators lose no catalog or history entry.

Abandoned loads: a load whose process died stays ``loading`` forever. The loading
process writes a heartbeat (``snapshot:heartbeat:<id>``) every
``features.snapshot_heartbeat_s``; ``gc`` takes a load whose last heartbeat (or,
without one, its start) is older than ``features.snapshot_abandoned_after_s`` as
abandoned. An age bound alone would reclaim a long load that is still running; a
heartbeat only stops when its process does. A load that ``gc`` reclaimed and
that then finishes is refused when it records itself ready.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ml_system.errors import StoreError
from ml_system.features.online.base import ACTIVE_SNAPSHOT, BASE, OnlineStore

HISTORY = "snapshot:history"
CATALOG = "snapshot:catalog"
HEARTBEAT = "snapshot:heartbeat:"
WRITABLE = ("loading", "ready")


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    created_at: str
    end: str
    state: str  # loading | ready | failed | reclaiming
    active: bool
    replaced_at: str = ""


@dataclass(frozen=True)
class GcReport:
    reclaimed: list[str]
    kept: list[str]


def new_snapshot_id() -> str:
    return datetime.now(UTC).strftime("s%Y%m%d%H%M%S") + secrets.token_hex(3)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _catalog(text: str | None) -> dict[str, dict[str, str]]:
    return json.loads(text or "{}")


def _history(text: str | None) -> list[str]:
    return json.loads(text or "[]")


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def record(online: OnlineStore, snapshot: str, end: str, state: str, *, expect: tuple[str, ...] = ()) -> None:
    """Set a snapshot's state; with ``expect``, only from one of those states (else ``StoreError``)."""

    def change(values: list[str | None]) -> dict[str, str | None]:
        catalog = _catalog(values[0])
        entry = catalog.get(snapshot)
        if expect and (entry or {}).get("state") not in expect:
            found = entry["state"] if entry else "gone (reclaimed)"
            raise StoreError(f"snapshot '{snapshot}' is {found}, not {' or '.join(expect)}")
        entry = catalog.setdefault(snapshot, {"created_at": _now(), "end": end})
        entry["state"] = state
        done = {} if state == "loading" else {HEARTBEAT + snapshot: None}
        return {CATALOG: _dump(catalog), **done}

    online.update_meta([CATALOG], change)


def activate(online: OnlineStore, snapshot: str) -> str:
    """Point readers at ``snapshot``; returns the id that was active before."""
    before: list[str] = []

    def change(values: list[str | None]) -> dict[str, str | None]:
        catalog, current, history = _catalog(values[0]), values[1] or BASE, _history(values[2])
        state = catalog.get(snapshot, {}).get("state")
        if snapshot != BASE and state != "ready":
            raise StoreError(f"snapshot '{snapshot}' is {state or 'unknown'}, not ready; load it first")
        before[:] = [current]
        if current == snapshot:
            return {}
        if current in catalog:
            catalog[current]["replaced_at"] = _now()
        return {ACTIVE_SNAPSHOT: snapshot, HISTORY: _dump([*history, current]), CATALOG: _dump(catalog)}

    online.update_meta([CATALOG, ACTIVE_SNAPSHOT, HISTORY], change)
    return before[0]


def rollback(online: OnlineStore) -> str:
    """Point readers back at the previously active snapshot; returns its id."""
    after: list[str] = []

    def change(values: list[str | None]) -> dict[str, str | None]:
        catalog, current, history = _catalog(values[0]), values[1] or BASE, _history(values[2])
        if not history:
            raise StoreError("no earlier snapshot to roll back to")
        previous = history.pop()
        after[:] = [previous]
        if current in catalog:
            catalog[current]["replaced_at"] = _now()
        return {ACTIVE_SNAPSHOT: previous, HISTORY: _dump(history), CATALOG: _dump(catalog)}

    online.update_meta([CATALOG, ACTIVE_SNAPSHOT, HISTORY], change)
    return after[0]


def listing(online: OnlineStore) -> list[SnapshotInfo]:
    catalog_text, active = online.get_meta_many([CATALOG, ACTIVE_SNAPSHOT])
    active = active or BASE
    out = [SnapshotInfo(BASE, "", "", "ready", active == BASE)]
    for sid, entry in sorted(_catalog(catalog_text).items()):
        out.append(
            SnapshotInfo(
                sid, entry["created_at"], entry["end"], entry["state"], active == sid, entry.get("replaced_at", "")
            )
        )
    return out


def write_targets(online: OnlineStore) -> list[str]:
    """Every namespace a reader may be switched to: the active one, rollback targets, loads loading or ready.

    A push or delete goes into all of them, so that no activation or rollback undoes it
    (upsert-if-newer keeps a pushed row right when the load writes the same key later).
    """
    catalog_text, active, history_text = online.get_meta_many([CATALOG, ACTIVE_SNAPSHOT, HISTORY])
    targets = [active or BASE]
    for sid in _history(history_text):
        if sid not in targets:
            targets.append(sid)
    for sid, entry in sorted(_catalog(catalog_text).items()):
        if entry["state"] in WRITABLE and sid not in targets:
            targets.append(sid)
    return targets


def drop(online: OnlineStore, snapshot: str) -> None:
    """Delete a snapshot that neither serves nor is a rollback target."""

    def mark(values: list[str | None]) -> dict[str, str | None]:
        catalog, active, history = _catalog(values[0]), values[1] or BASE, _history(values[2])
        if snapshot == active or snapshot in history:
            raise StoreError(f"snapshot '{snapshot}' is active or a rollback target; it cannot be dropped")
        if snapshot in catalog:
            catalog[snapshot]["state"] = "reclaiming"
        return {CATALOG: _dump(catalog)}

    online.update_meta([CATALOG, ACTIVE_SNAPSHOT, HISTORY], mark)
    _reclaim(online, [snapshot])


def _reclaim(online: OnlineStore, victims: list[str]) -> None:
    """Drop the rows of snapshots already marked ``reclaiming``, then their catalog entries and meta values."""
    for sid in victims:
        online.drop_snapshot(sid)
    names = online.meta_names()
    extra = [n for n in names for sid in victims if n == HEARTBEAT + sid or n.endswith(f"@{sid}")]

    def forget(values: list[str | None]) -> dict[str, str | None]:
        catalog = _catalog(values[0])
        for sid in victims:
            if catalog.get(sid, {}).get("state") == "reclaiming":
                del catalog[sid]
        return {CATALOG: _dump(catalog), **dict.fromkeys(extra)}

    online.update_meta([CATALOG], forget)


def gc(online: OnlineStore, keep: int = 1, abandoned_after_s: float = 600.0) -> GcReport:
    """Reclaim snapshots no reader can be switched back to, and loads that failed or were abandoned.

    Kept: the active snapshot, the ``keep`` most recent rollback targets (``rollback``
    returns to them in order; older entries leave the rollback stack) and snapshots
    loaded but never served. Reclaimed: every other snapshot that has served, failed
    loads, and loads whose heartbeat stopped ``abandoned_after_s`` ago. Snapshots are
    first marked ``reclaiming`` (atomically with the checks), so a ``gc`` that dies
    part-way is finished by the next one, and nothing can activate them meanwhile.
    """
    if keep < 1:
        raise StoreError("gc must keep at least one rollback target (keep >= 1)")
    catalog_now = _catalog(online.get_meta(CATALOG))
    loading = [sid for sid, entry in catalog_now.items() if entry["state"] == "loading"]
    beats = dict(zip(loading, online.get_meta_many([HEARTBEAT + sid for sid in loading]), strict=True))
    now = datetime.now(UTC)
    abandoned = {
        sid
        for sid in loading
        if (now - datetime.fromisoformat(beats[sid] or catalog_now[sid]["created_at"])).total_seconds()
        > abandoned_after_s
    }
    chosen: dict[str, list[str]] = {}

    def mark(values: list[str | None]) -> dict[str, str | None]:
        catalog, active, history = _catalog(values[0]), values[1] or BASE, _history(values[2])
        targets: list[str] = []
        for sid in reversed(history):
            if sid != active and sid not in targets and len(targets) < keep:
                targets.append(sid)
        victims = []
        for sid, entry in catalog.items():
            if sid == active or sid in targets:
                continue
            state = entry["state"]
            served = bool(entry.get("replaced_at")) or sid in history
            if state in ("failed", "reclaiming") or (state == "loading" and sid in abandoned):
                victims.append(sid)
            elif state == "ready" and served:
                victims.append(sid)
        for sid in victims:
            catalog[sid]["state"] = "reclaiming"
        kept = [sid for sid in history if sid in targets]
        chosen["victims"], chosen["kept"] = sorted(victims), [active, *targets]
        return {CATALOG: _dump(catalog), HISTORY: _dump(kept)}

    online.update_meta([CATALOG, ACTIVE_SNAPSHOT, HISTORY], mark)
    if chosen["victims"]:
        _reclaim(online, chosen["victims"])
    return GcReport(chosen["victims"], chosen["kept"])


class Heartbeat:
    """Writes a load's heartbeat every ``interval_s`` until stopped (a daemon thread of the loading process)."""

    def __init__(self, online: OnlineStore, snapshot: str, interval_s: float) -> None:
        self._beat: Callable[[], None] = lambda: online.set_meta(HEARTBEAT + snapshot, _now())
        self._stop = threading.Event()
        self._interval = interval_s
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{snapshot}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except StoreError:  # a missed beat is retried at the next interval; only a long silence counts
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
