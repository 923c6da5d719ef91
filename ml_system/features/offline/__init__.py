"""The offline store: Delta tables, on the backend the config's ``type`` names."""

from __future__ import annotations

from collections.abc import Sequence

from ml_system.config import OFFLINE_STORE_CLASS_FOR_TYPE, OfflineStoreConfig
from ml_system.features.backends import backend_class
from ml_system.features.offline.base import OfflineStore, TableState


def open_offline_store(config: OfflineStoreConfig, shared_paths: Sequence[str] = ()) -> OfflineStore:
    """``shared_paths`` (``ray.shared_paths``): mounts every node sees, where a local root is allowed on a cluster."""
    cls = backend_class("offline_store", config.type, OFFLINE_STORE_CLASS_FOR_TYPE, OfflineStore)
    return cls(config, shared_paths)  # type: ignore[call-arg]


__all__ = ["OfflineStore", "TableState", "open_offline_store"]
