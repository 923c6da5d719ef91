"""Online stores behind one interface; the backend comes from the config's ``type``."""

from __future__ import annotations

from ml_system.config import OnlineStoreConfig
from ml_system.features.online.base import FeatureStatus, OnlineRow, OnlineStore, entity_key


def open_online_store(config: OnlineStoreConfig) -> OnlineStore:
    """Type-to-class map, loaded lazily so the embedded default needs no Redis client."""
    if config.type == "sqlite":
        from ml_system.features.online.sqlite import SqliteOnlineStore

        return SqliteOnlineStore(config.path)
    if config.type == "redis":
        from ml_system.features.online.redis import RedisOnlineStore

        return RedisOnlineStore(config.redis_url, read_spin_us=config.redis_read_spin_us)
    raise ValueError(f"unknown online store type {config.type!r}")


__all__ = ["FeatureStatus", "OnlineRow", "OnlineStore", "entity_key", "open_online_store"]
