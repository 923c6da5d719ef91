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

from ml_system.features.online import OnlineRow, OnlineStore
from ml_system.serving.cache import MISSING, TTLCache

SNAPSHOT_META = "snapshot_id"


def data_version(store: OnlineStore, views: Sequence[str]) -> str:
    """What identifies the online data a replica reads, cheaply (a few meta probes).

    A snapshot id, once the store publishes one, wins; until then the
    per-view ``materialized_until`` marks change on every materialization.
    Kept behind this one function so the source can be switched.
    """
    snapshot = store.get_meta(SNAPSHOT_META)
    if snapshot is not None:
        return f"snapshot:{snapshot}"
    return "mat:" + ",".join(f"{v}={store.get_meta(f'materialized_until:{v}') or ''}" for v in views)


class CachingOnlineStore(OnlineStore):
    def __init__(self, inner: OnlineStore, cache: TTLCache, views: Sequence[str]) -> None:
        self.inner = inner
        self.cache = cache
        self.views = list(views)
        self.version = ""

    def refresh(self) -> str:
        """Re-read the data version (once per request, before any read)."""
        if self.cache.enabled:
            self.version = data_version(self.inner, self.views)
        return self.version

    def read(self, view: str, keys: Sequence[str]) -> list[OnlineRow | None]:
        if not self.cache.enabled:
            return self.inner.read(view, keys)
        out: list[OnlineRow | None] = [None] * len(keys)
        todo: list[int] = []
        for i, key in enumerate(keys):
            hit = self.cache.get((self.version, view, key))
            if hit is MISSING:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            fetched = self.inner.read(view, [keys[i] for i in todo])
            for i, row in zip(todo, fetched, strict=True):
                out[i] = row
                self.cache.put((self.version, view, keys[i]), row)
        return out

    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]]) -> int:
        return self.inner.write_batch(view, rows)

    def get_meta(self, name: str) -> str | None:
        return self.inner.get_meta(name)

    def set_meta(self, name: str, value: str) -> None:
        self.inner.set_meta(name, value)

    def close(self) -> None:
        self.inner.close()
