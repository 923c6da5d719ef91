"""MLflow: runs, lineage and the model registry.

Versions are addressed by aliases (``champion``, ``challenger``) and described
by tags, never by MLflow's deprecated stages. Lineage lives in tags of both the
run and the model version: the feature service, the Delta table versions of the
training set and (for models logged by ``mlflow_model``) the checksum.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ml_system.config import MlflowConfig
from ml_system.errors import ModelNotFoundError

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: list[str]
    stage: str = ""
    """MLflow's (legacy) stage; "Archived" marks a version that no longer serves."""


def client(config: MlflowConfig) -> MlflowClient:
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.tracking_uri)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def experiment_id(config: MlflowConfig, name: str | None = None) -> str:
    c = client(config)
    name = name or config.experiment or "ml_system"
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=config.artifact_location)
    except MlflowException:  # created meanwhile by another process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def register_model(
    config: MlflowConfig,
    model_name: str,
    run_id: str,
    artifact_path: str,
    tags: dict[str, str],
    alias: str | None = CHAMPION,
) -> RegisteredModel:
    """Register the files under ``artifact_path`` of a run (for models that are not MLflow logged models)."""
    run = client(config).get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    return register_source(config, model_name, source, run_id=run_id, tags=tags, alias=alias)


def register_source(
    config: MlflowConfig,
    model_name: str,
    source: str,
    *,
    run_id: str | None,
    tags: dict[str, str],
    alias: str | None = CHAMPION,
    model_id: str | None = None,
) -> RegisteredModel:
    """A new version of ``model_name`` from ``source``; tags are written with the version, in one call.

    ``model_id`` links the version to an MLflow logged model (``source`` then is ``models:/<model_id>``).
    """
    c = client(config)
    try:
        c.create_registered_model(model_name, description="Registered by ml_system")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv = c.create_model_version(model_name, source=source, run_id=run_id, tags=tags, model_id=model_id)
    if alias:
        try:
            c.set_registered_model_alias(model_name, alias, mv.version)
        except Exception:
            # a version whose alias never moved is half-registered: nothing points at it, and a retry
            # would add another; take it back so that the registry holds what it held before
            c.delete_model_version(model_name, mv.version)
            raise
    return resolve(config, model_name, version=str(mv.version))


def resolve(
    config: MlflowConfig, model_name: str, alias: str | None = None, version: str | None = None
) -> RegisteredModel:
    c = client(config)
    try:
        if version is not None:
            mv = c.get_model_version(model_name, version)
        else:
            mv = c.get_model_version_by_alias(model_name, alias or CHAMPION)
    except MlflowException as exc:
        what = f"version {version}" if version else f"alias '{alias or CHAMPION}'"
        raise ModelNotFoundError(f"model '{model_name}' has no {what}; train one with `mlsys train`") from exc
    return RegisteredModel(
        name=model_name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source,
        tags=dict(mv.tags or {}),
        aliases=list(getattr(mv, "aliases", []) or []),
        stage=mv.current_stage or "",
    )


def list_versions(config: MlflowConfig, model_name: str | None = None) -> list[RegisteredModel]:
    """Every version with its aliases (``search_model_versions`` leaves aliases out)."""
    c = client(config)
    query = f"name='{model_name}'" if model_name else None
    aliases: dict[str, dict[str, list[str]]] = {}
    out = []
    for mv in c.search_model_versions(query):
        if mv.name not in aliases:
            by_version: dict[str, list[str]] = {}
            for alias, version in (c.get_registered_model(mv.name).aliases or {}).items():
                by_version.setdefault(str(version), []).append(alias)
            aliases[mv.name] = by_version
        out.append(
            RegisteredModel(
                mv.name,
                str(mv.version),
                mv.run_id or "",
                mv.source,
                dict(mv.tags or {}),
                sorted(aliases[mv.name].get(str(mv.version), [])),
                mv.current_stage or "",
            )
        )
    return sorted(out, key=lambda m: (m.name, int(m.version)))


def log_dict_artifact(data: dict[str, Any], name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, default=str), name)
