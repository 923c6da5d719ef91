"""Kept for callers that import ``OfflineStore`` from here; the store lives in ``ml_system.features.offline``."""

from ml_system.features.offline import OfflineStore, open_offline_store

__all__ = ["OfflineStore", "open_offline_store"]
