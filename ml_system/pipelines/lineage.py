"""Keep the feature registry's consumers in step with MLflow's model registry.

Training records a consumer when it registers a model version; this catches
what happened in MLflow afterwards (a version archived or deleted there, or one
registered by other tooling with a ``feature_service`` tag), so a view is only
protected while a model that reads it is alive.
"""

from __future__ import annotations

from ml_system.config import MlflowConfig
from ml_system.features import FeatureStore
from ml_system.training import tracking

ARCHIVED = "Archived"


def sync_consumers(store: FeatureStore, mlflow: MlflowConfig) -> tuple[list[str], list[str]]:
    """Returns ``(recorded, archived)`` as ``model vN`` names."""
    registry = store.registry
    known = {(c.model, c.version): c for c in registry.consumers(include_archived=True)}
    services = registry.feature_services()
    live: set[tuple[str, str]] = set()
    recorded: list[str] = []
    archived: list[str] = []
    for mv in tracking.list_versions(mlflow):
        service = mv.tags.get("feature_service")
        if not service or service not in services:
            continue
        if mv.stage == ARCHIVED:
            continue
        live.add((mv.name, mv.version))
        if (mv.name, mv.version) not in known or known[(mv.name, mv.version)].archived:
            registry.record_consumer(service, mv.name, mv.version, by="mlflow-sync")
            recorded.append(f"{mv.name} v{mv.version}")
    for (model, version), consumer in known.items():
        if not consumer.archived and (model, version) not in live:
            registry.archive_consumer(model, version, by="mlflow-sync")
            archived.append(f"{model} v{version}")
    return recorded, archived
