"""Online stores behind one interface; the backend comes from the config's ``type``.

A name -> import-path table, as Feast's ``ONLINE_STORE_CLASS_FOR_TYPE``, imported
lazily so the embedded default needs no Redis client. A ``type`` that is not in
the table is taken as a class's import path, so a backend can live outside the
package (its pydantic ``config_model`` checks its settings when the config loads).
Adding a backend here is one module and one line, plus its config model in
``ml_system.config`` (which must not import the engine, so it cannot read ours).
"""

from __future__ import annotations

import importlib
from typing import Any

from ml_system.errors import ConfigError
from ml_system.features.online.base import FeatureStatus, OnlineRow, OnlineStore, entity_key

ONLINE_STORE_CLASS_FOR_TYPE: dict[str, str] = {
    "sqlite": "ml_system.features.online.sqlite.SqliteOnlineStore",
    "redis": "ml_system.features.online.redis.RedisOnlineStore",
}


def online_store_class(kind: str) -> type[OnlineStore]:
    path = ONLINE_STORE_CLASS_FOR_TYPE.get(kind, kind)
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"online store type '{kind}': cannot import '{path}': {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, OnlineStore)):
        raise ConfigError(f"online store type '{kind}': '{path}' is not an OnlineStore")
    return cls


def open_online_store(config: Any) -> OnlineStore:
    """The store a validated ``online_store`` config describes; a custom backend gets its own config model."""
    cls = online_store_class(config.type)
    if config.type not in ONLINE_STORE_CLASS_FOR_TYPE:
        config = config.backend_settings()
    return cls.from_config(config)


__all__ = [
    "ONLINE_STORE_CLASS_FOR_TYPE",
    "FeatureStatus",
    "OnlineRow",
    "OnlineStore",
    "entity_key",
    "online_store_class",
    "open_online_store",
]
