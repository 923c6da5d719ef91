"""Feature store: definitions, registry, offline (Delta) and online stores, joins."""

from ml_system.features.definitions import (
    DeltaSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Lifecycle,
    OnDemandFeatureView,
)
from ml_system.features.online import FeatureStatus
from ml_system.features.store import FeatureStore, OnlineFeatureReader, OnlineFeatures

__all__ = [
    "DeltaSource",
    "Entity",
    "FeatureService",
    "FeatureStatus",
    "FeatureStore",
    "FeatureView",
    "Field",
    "Lifecycle",
    "OnDemandFeatureView",
    "OnlineFeatureReader",
    "OnlineFeatures",
]
