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
from ml_system.features.online.base import BASE
from ml_system.serving.cache import MISSING, TTLCache


def data_version(store: OnlineStore, views: Sequence[str], snapshot: str | None = None) -> str:
    """What identifies the online data a replica reads, cheaply (a few meta probes).

    The active snapshot (switched atomically by a data rollout) plus each
    view's ``materialized_until`` mark in that namespace, which moves on every
    materialization. Kept behind this one function so the source can be switched.
    """
    if snapshot is None:
        snapshot = store.active_snapshot()
    marks = ",".join(f"{v}={store.get_meta(watermark_key(v, snapshot)) or ''}" for v in views)
    return f"{snapshot or 'base'}|{marks}"


class CachingOnlineStore(OnlineStore):
    def __init__(self, inner: OnlineStore, cache: TTLCache, views: Sequence[str]) -> None:
        self.inner = inner
        self.cache = cache
        self.views = list(views)
        self.version = ""
        self.snapshot = BASE

    def refresh(self, needed: bool = False) -> str:
        """Re-read the data version (once per request, before any read).

        Skipped when no cache keys on it: ``needed`` is for callers with caches
        of their own (predictions) that must never outlive a data change.
        """
        if self.cache.enabled or needed:
            self.snapshot = self.inner.active_snapshot()
            self.version = data_version(self.inner, self.views, self.snapshot)
        return self.version

    def read_views(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[OnlineRow | None]]:
        if not self.cache.enabled:
            return self.inner.read_views(requests)  # one round trip where the backend can
        return [self.read(view, keys, self.snapshot) for view, keys in requests]

    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        if not self.cache.enabled:
            return self.inner.read(view, keys, snapshot)
        out: list[OnlineRow | None] = [None] * len(keys)
        todo: list[int] = []
        for i, key in enumerate(keys):
            hit = self.cache.get((self.version, view, key))
            if hit is MISSING:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            fetched = self.inner.read(view, [keys[i] for i in todo], snapshot)
            for i, row in zip(todo, fetched, strict=True):
                out[i] = row
                self.cache.put((self.version, view, keys[i]), row)
        return out

    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE) -> int:
        return self.inner.write_batch(view, rows, snapshot)

    def drop_snapshot(self, snapshot: str) -> None:
        self.inner.drop_snapshot(snapshot)

    def get_meta(self, name: str) -> str | None:
        return self.inner.get_meta(name)

    def set_meta(self, name: str, value: str) -> None:
        self.inner.set_meta(name, value)

    def set_meta_many(self, values: dict[str, str]) -> None:
        self.inner.set_meta_many(values)

    def close(self) -> None:
        self.inner.close()
