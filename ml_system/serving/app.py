"""The Serve application of any use case, built from typed arguments.

``serve run`` / ``serve deploy`` call ``build_app`` with the YAML's ``args``; because its one
parameter is a pydantic model, Serve validates them before anything is deployed (Ray Serve's
typed app-builder pattern), so a misspelt argument fails the deploy with the field named
instead of a replica crashing later. The use case is taken by name from the use-case table and
checked (with every other use case: two may not claim one route or model name) at build time.

This module must not use ``from __future__ import annotations``: Serve reads the builder's
annotation as a class to validate the arguments, and a string annotation would bypass that.
"""

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from ml_system.serving.ingress import Ingress, ScorerDeployment
from ml_system.serving.settings import MAX_ROWS, SCORER_TIMEOUT_S, ScorerSettings
from ml_system.usecase import DEFAULT_USECASE, load_usecase


class AppArgs(BaseModel):
    """``args`` of a use case's app in a Serve config."""

    model_config = ConfigDict(extra="forbid")

    usecase: str = DEFAULT_USECASE
    model_name: str | None = Field(None, description="Registered model (default: the use case's)")
    alias: str = "champion"
    version: str | None = Field(None, description="Pin a model version instead of following the alias")
    home: str | None = Field(None, description="Platform home (default: $MLSYS_HOME or ~/.mlsys)")
    topology: Literal["fused", "split"] = "fused"
    device: str = "cpu"
    tracing_exporter: str = Field(
        default_factory=lambda: os.environ.get("MLSYS_TRACING_EXPORTER", "none"),
        description="none | console | file:/path | otlp",
    )
    max_rows: int = Field(MAX_ROWS, ge=1, le=100_000)
    scorer_timeout_s: float = Field(SCORER_TIMEOUT_S, gt=0, le=300, description="Deadline of a split ingress's call")
    num_replicas: int | None = Field(None, ge=1, description="Fixed replicas of the scoring deployment")
    api_keys: Literal["auto", "required", "off"] = Field(
        "auto",
        description="Team token needed on /predict: auto (when the HTTP proxy binds a non-loopback address), "
        "required, off; /info and /push always need one (docs/security.md)",
    )
    user_config: ScorerSettings = Field(default_factory=ScorerSettings)

    def scorer_args(self) -> dict[str, Any]:
        """What ``Scorer`` and ``ScorerDeployment`` are built from."""
        return {
            "usecase": self.usecase,
            "model_name": self.model_name,
            "alias": self.alias,
            "version": self.version,
            "home": self.home,
            "device": self.device,
        }

    def ingress_args(self) -> dict[str, Any]:
        """What ``Ingress`` is built from (plain values: they travel to every replica)."""
        return {
            "scorer": self.scorer_args(),
            "max_rows": self.max_rows,
            "tracing_exporter": self.tracing_exporter,
            "scorer_timeout_s": self.scorer_timeout_s,
            "api_keys": self.api_keys,
        }


def build_app(args: AppArgs) -> Application:
    """Application builder for ``serve run``/``serve deploy`` and for Python callers (a dict works too).

    ``topology``: ``fused`` (default) or ``split`` (a thin ingress in front of
    ``ScorerDeployment``, for GPU placement and sticky sessions); ``device``: ``cpu`` or ``cuda``
    (falls back to CPU with a log line); ``user_config``: the scorer's initial settings when the
    YAML gives none per deployment.
    """
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    usecase = load_usecase(args.usecase)
    args = args.model_copy(update={"model_name": args.model_name or usecase.model_name})
    ingress_args = args.ingress_args()
    user_config = args.user_config.model_dump()
    if args.topology == "split":
        scorer = ScorerDeployment.options(user_config=user_config)
        if args.num_replicas is not None:
            scorer = scorer.options(num_replicas=args.num_replicas)
        handle = scorer.bind(args.scorer_args(), args.tracing_exporter)
        return Ingress.bind(handle, ingress_args)
    ingress = Ingress.options(user_config=user_config)
    if args.num_replicas is not None:
        ingress = ingress.options(num_replicas=args.num_replicas)
    return ingress.bind(None, ingress_args)
