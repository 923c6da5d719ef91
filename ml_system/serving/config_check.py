"""Check a Serve config document fully before anything is sent to the cluster.

``serve deploy`` validates the document's outline, but ``autoscaling_config`` and ``user_config``
travel as opaque mappings: a ``min_replicas: "x"`` or a ``max_batch_size: "64x"`` is accepted
there and fails later on the cluster, where a user_config typo used to leave the app with no
replicas. Here every deployment's autoscaling block is validated with Serve's own
``AutoscalingConfig``, and for our app builder the ``args`` (``AppArgs``) and each scoring
deployment's ``user_config`` (``ScorerSettings``) too, so a bad change is refused with the field
named and the running app is not touched. (A replica also refuses a ``user_config`` it cannot use
and keeps its settings, for documents sent by other means.)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from ml_system.errors import ConfigError

BUILDER = "ml_system.serving.app:build_app"
SCORING_DEPLOYMENTS = ("Ingress", "ScorerDeployment")


def _refuse(where: str, exc: ValidationError) -> ConfigError:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in (where, *first["loc"]) if p != "")
    return ConfigError(f"serve config field '{field}': {first['msg']}")


def _check(model: type[BaseModel], data: Any, where: str) -> None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise _refuse(where, exc) from None


def validate_document(document: dict[str, Any]) -> Any:
    """The document as Serve's ``ServeDeploySchema``, or ``ConfigError`` naming the first bad field."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from ml_system.serving.app import AppArgs
    from ml_system.serving.settings import ScorerSettings

    try:
        schema = ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        raise _refuse("", exc) from None
    for i, app in enumerate(document.get("applications") or []):
        ours = app.get("import_path") == BUILDER
        if ours:
            _check(AppArgs, app.get("args") or {}, f"applications.{i}.args")
        for j, deployment in enumerate(app.get("deployments") or []):
            where = f"applications.{i}.deployments.{j}"
            if deployment.get("autoscaling_config") is not None:
                _check(AutoscalingConfig, deployment["autoscaling_config"], f"{where}.autoscaling_config")
            if ours and deployment.get("name") in SCORING_DEPLOYMENTS and deployment.get("user_config") is not None:
                _check(ScorerSettings, deployment["user_config"], f"{where}.user_config")
    return schema
