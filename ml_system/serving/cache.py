"""A small TTL cache whose keys carry the versions that make an answer valid.

``cachetools`` would do the eviction, but the part that matters here is the
key: every entry is keyed on the model version and the data version, so a new
model or a new online-store snapshot can never be answered from an older
entry, while the TTL bounds how long streamed (pushed) values may lag.
Replicas own their cache; sticky routing is what makes that pay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

MISSING: Any = object()


class TTLCache:
    """Insertion-ordered dict with expiry; evicts the oldest entry past ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: dict[Hashable, tuple[float, Any]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def get(self, key: Hashable) -> Any:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return MISSING
        if entry[0] < self._clock():
            del self._data[key]
            self.misses += 1
            return MISSING
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        if not self.enabled:
            return
        self._data.pop(key, None)
        self._data[key] = (self._clock() + self.ttl_s, value)
        while len(self._data) > self.max_entries:
            del self._data[next(iter(self._data))]

    def resize(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        if not self.enabled:
            self._data.clear()
        while len(self._data) > max(self.max_entries, 0):
            del self._data[next(iter(self._data))]

    def __len__(self) -> int:
        return len(self._data)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
