"""Rebuild a registered model from what its version records, and show whether the same input gave
the same model.

A version registered by training (a pipeline run or ``mlsys train``) carries its inputs as tags:
the Delta version of every table read, the feature registry's version, the winning trial's
config, the number of boosting rounds, the seed, the as-of moment, the digest of the training
set, the code version. A reproduction rebuilds the training set from those (Delta time travel,
the registry pinned at its version) and trains once more with the winner's config, without a
search: Tune's job was to find the config, and the config with the seed decides the trees
(``tune_xgb.train_once``, one thread). It then scores the test split with both the registered
booster and the new one. Identical predictions on every row is the verdict; where they differ,
the report names which recorded input no longer matches (a table rewritten below its recorded
version, a different training set, other code or library versions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from ml_system.config import PlatformConfig
from ml_system.errors import PipelineError
from ml_system.features import FeatureStore
from ml_system.pipelines import fingerprint, history
from ml_system.pipelines.steps import booster_digest, usecase_for
from ml_system.pipelines.storage import open_storage
from ml_system.training import mlflow_model, tracking, trainer
from ml_system.training.evaluate import predict
from ml_system.training.tune_xgb import train_once, training_data

NEEDED = ("usecase", "table_versions", "params", "num_boost_round", "seed")


@dataclass
class Check:
    item: str
    recorded: str
    now: str
    same: bool
    note: str = ""


@dataclass
class Reproduction:
    model: str
    version: str
    identical: bool
    rows_compared: int
    rows_differing: int
    max_abs_diff: float
    checks: list[Check] = field(default_factory=list)

    @property
    def differences(self) -> list[Check]:
        return [c for c in self.checks if not c.same]


def resolve_target(config: PlatformConfig, target: str, version: str | None) -> tracking.RegisteredModel:
    """``RUN`` (a pipeline run id) or ``MODEL VERSION``."""
    if version is not None:
        return tracking.resolve(config.mlflow, target, version=version)
    record = history.load(open_storage(config), target)
    if not record.model_version:
        raise PipelineError(f"run {target} registered no model (status {record.status}); nothing to reproduce")
    usecase = usecase_for(config, record.usecase)
    return tracking.resolve(config.mlflow, usecase.model_name, version=record.model_version)


def reproduce(config: PlatformConfig, target: str, version: str | None = None) -> Reproduction:
    mv = resolve_target(config, target, version)
    tags = mv.tags
    missing = [t for t in NEEDED if not tags.get(t)]
    if missing:
        raise PipelineError(
            f"model '{mv.name}' version {mv.version} does not record {missing}: it was registered before runs "
            "recorded their inputs, so it cannot be rebuilt"
        )
    usecase = usecase_for(config, tags["usecase"])
    store = FeatureStore(config)
    checks: list[Check] = []
    recorded_versions: dict[str, int] = json.loads(tags["table_versions"])
    for table, recorded in sorted(recorded_versions.items()):
        latest = store.offline.version(table) if store.offline.exists(table) else -1
        note = "" if latest == recorded else f"changed since (now v{latest}); rebuilt from v{recorded} by time travel"
        checks.append(Check(f"table {table}", f"v{recorded}", f"v{latest}", True, note))
    registry_version = int(tags.get("registry_version") or 0)
    if registry_version:
        store.registry = store.registry.at_version(registry_version)
    recorded_defs = tags.get("definitions_sha256", "")
    if recorded_defs:
        now_defs = fingerprint.definitions_digest(FeatureStore(config).registry.document(), usecase.feature_service)
        note = "" if now_defs == recorded_defs else f"changed since; rebuilt from registry v{registry_version}"
        checks.append(Check("feature definitions", recorded_defs[:12], now_defs[:12], True, note))
    as_of = datetime.fromisoformat(tags["as_of"]) if tags.get("as_of") else None
    ts = trainer.build_training_set(store, usecase, as_of=recorded_versions, as_of_time=as_of)
    digest = ts.digest()
    if tags.get("training_set_sha256"):
        same = digest == tags["training_set_sha256"]
        checks.append(Check("training set", tags["training_set_sha256"][:12], digest[:12], same))
    code = fingerprint.code_version_of(usecase)
    if tags.get("code_version"):
        same = code["source"] == tags["code_version"]
        note = "" if same else "platform sources or library versions differ from the run's"
        checks.append(Check("code version", tags["code_version"][:12], code["source"][:12], same, note))
    params: dict[str, Any] = json.loads(tags["params"])
    checks.append(Check("seed", tags["seed"], str(params.get("seed")), str(params.get("seed")) == tags["seed"]))
    train, valid, test = (ts.split(name) for name in trainer.SPLITS)
    booster = train_once(params, training_data(train, valid, ts.features, ts.label), int(tags["num_boost_round"]))
    original, spec = mlflow_model.load_model(config.mlflow, mv)
    if tags.get("model_sha256"):
        rebuilt = booster_digest(booster)
        checks.append(Check("booster", tags["model_sha256"][:12], rebuilt[:12], rebuilt == tags["model_sha256"]))
    before = predict(original, test, list(spec.feature_columns))
    after = predict(booster, test, ts.features)
    differing = int(np.sum(before != after))
    checks.append(Check("test predictions", f"{len(before)} rows", f"{differing} differ", differing == 0))
    same_input = all(c.same for c in checks)
    return Reproduction(
        model=mv.name,
        version=mv.version,
        identical=same_input and differing == 0 and len(before) == len(after),
        rows_compared=len(before),
        rows_differing=differing,
        max_abs_diff=float(np.max(np.abs(before - after))) if len(before) else 0.0,
        checks=checks,
    )
