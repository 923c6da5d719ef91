"""Online feature reads through a per-replica TTL cache, keyed on the data version.

Wraps any ``OnlineStore`` (SQLite, Redis) so ``OnlineFeatureReader`` keeps its
freshness logic unchanged: only the rows fetched from the store are cached.
The data version is read once per request by ``refresh()``; a new
materialization or snapshot changes it and every older entry becomes
unreachable at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ml_system.features.materialize import watermark_key
from ml_system.features.online import OnlineRow, OnlineStore
from ml_system.features.online.base import BASE, MetaChange
from ml_system.serving.cache import MISSING, TTLCache


def data_version(store: OnlineStore, views: Sequence[str], snapshot: str | None = None) -> str:
    """What identifies the online data a replica reads, cheaply (two meta reads).

    The active snapshot (switched atomically by a data rollout) plus each
    view's ``materialized_until`` mark in that namespace, which moves on every
    materialization. Kept behind this one function so the source can be switched.
    """
    if snapshot is None:
        snapshot = store.active_snapshot()
    marks = store.get_meta_many([watermark_key(v, snapshot) for v in views])
    return f"{snapshot or 'base'}|" + ",".join(f"{v}={m or ''}" for v, m in zip(views, marks, strict=True))


class CachingOnlineStore(OnlineStore):
    def __init__(self, inner: OnlineStore, cache: TTLCache, views: Sequence[str]) -> None:
        self.inner = inner
        self.cache = cache
        self.views = list(views)
        self.version = ""
        self.snapshot: str | None = None  # resolved by refresh(); None: each read resolves it itself

    def refresh(self, needed: bool = False) -> str:
        """Re-read the data version (once per request, before any read).

        Skipped when no cache keys on it: ``needed`` is for callers with caches
        of their own (predictions) that must never outlive a data change. Once
        read, the request's rows come from that same snapshot, so a switch in
        between cannot file new rows under the old version.
        """
        if self.cache.enabled or needed:
            self.snapshot = self.inner.active_snapshot()
            self.version = data_version(self.inner, self.views, self.snapshot)
        else:
            self.snapshot = None
        return self.version

    def read_views(
        self, requests: Sequence[tuple[str, Sequence[str]]], snapshot: str | None = None
    ) -> list[list[OnlineRow | None]]:
        """Cached rows, and every view's misses in one read of the backend."""
        snapshot = self.snapshot if snapshot is None else snapshot
        if not self.cache.enabled:
            return self.inner.read_views(requests, snapshot)
        out: list[list[OnlineRow | None]] = []
        misses: list[tuple[int, list[int]]] = []
        for n, (view, keys) in enumerate(requests):
            rows: list[OnlineRow | None] = [None] * len(keys)
            todo: list[int] = []
            for i, key in enumerate(keys):
                hit = self.cache.get((self.version, view, key))
                if hit is MISSING:
                    todo.append(i)
                else:
                    rows[i] = hit
            out.append(rows)
            if todo:
                misses.append((n, todo))
        if misses:
            fetched = self.inner.read_views(
                [(requests[n][0], [requests[n][1][i] for i in todo]) for n, todo in misses], snapshot
            )
            for (n, todo), got in zip(misses, fetched, strict=True):
                view, keys = requests[n]
                for i, row in zip(todo, got, strict=True):
                    out[n][i] = row
                    self.cache.put((self.version, view, keys[i]), row)
        return out

    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        return self.read_views([(view, keys)], snapshot)[0]

    def write_batch(
        self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE, *, fields: Sequence[str]
    ) -> int:
        return self.inner.write_batch(view, rows, snapshot, fields=fields)

    def delete(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> int:
        return self.inner.delete(view, keys, snapshot)

    def drop_snapshot(self, snapshot: str) -> None:
        self.inner.drop_snapshot(snapshot)

    def layout_fields(self, view: str, layout: bytes) -> tuple[str, ...] | None:
        return self.inner.layout_fields(view, layout)

    def meta_names(self) -> list[str]:
        return self.inner.meta_names()

    def update_meta(self, names: Sequence[str], change: MetaChange) -> None:
        self.inner.update_meta(names, change)

    def get_meta(self, name: str) -> str | None:
        return self.inner.get_meta(name)

    def get_meta_many(self, names: Sequence[str]) -> list[str | None]:
        return self.inner.get_meta_many(names)

    def set_meta(self, name: str, value: str) -> None:
        self.inner.set_meta(name, value)

    def set_meta_many(self, values: dict[str, str]) -> None:
        self.inner.set_meta_many(values)

    def close(self) -> None:
        self.inner.close()
