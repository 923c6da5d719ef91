"""The steps of a use case's loop, shared by the CLI, ``jobs/``, the quickstart, the pipeline and the tests.

Each step is a plain function over a ``PlatformConfig`` and a use case, so the same code runs
from ``mlsys``, from ``ray job submit``, as a task of the retraining pipeline and from a test,
for every use case.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
import xgboost as xgb

from ml_system.config import PlatformConfig
from ml_system.errors import ModelNotFoundError, PipelineError
from ml_system.features import FeatureStore
from ml_system.pipelines import fingerprint, validation
from ml_system.pipelines.context import StepContext, parse_as_of
from ml_system.rollout import gate
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.training import mlflow_model, tracking, trainer
from ml_system.training.evaluate import predict, score
from ml_system.training.trainer import TrainReport, train_usecase
from ml_system.training.tune_xgb import TrialSummary
from ml_system.usecase import UseCase, load_usecase


def usecase_for(config: PlatformConfig, name: str | None) -> UseCase:
    """The named use case (flights by default) from the table, extended by the config's ``usecases``."""
    return load_usecase(name, config.usecases)


def build_features(config: PlatformConfig, usecase: UseCase) -> dict[str, int]:
    """Offline tables of the use case (and of the use cases it reads from), then its definitions."""
    store = FeatureStore(config)
    versions: dict[str, int] = {}
    required = [load_usecase(name, config.usecases, check_all=False) for name in usecase.requires]
    for uc in [*required, usecase]:
        if uc.build_features is not None:
            versions.update(uc.build_features(config))
        versions["registry"] = store.apply(list(uc.definitions), by=f"usecase:{uc.name}")
    return versions


def train(
    config: PlatformConfig,
    usecase: UseCase,
    num_samples: int = 8,
    num_boost_round: int | None = None,
    on_trial_done: Callable[[str, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    admission: TrialAdmission | None = None,
) -> TrainReport:
    """Train and register the new version as ``challenger`` and run the promotion gate on it.

    The first version of a model (no champion yet) becomes ``champion``: there is nothing to compare
    it with, and an app needs something to serve.
    """
    try:
        tracking.resolve(config.mlflow, usecase.model_name, alias=tracking.CHAMPION)
        alias = tracking.CHALLENGER
    except ModelNotFoundError:
        alias = tracking.CHAMPION

    def run_gate(ts: trainer.TrainingSet, report: TrainReport) -> None:
        if report.alias == tracking.CHALLENGER:
            gate.evaluate_and_record(config, usecase, ts.split("test"), ts.label, report.model_version)

    return train_usecase(
        config,
        usecase,
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        alias=alias,
        on_trial_done=on_trial_done,
        on_stage=on_stage,
        admission=admission,
        on_registered=run_gate,
    )


def materialize(
    config: PlatformConfig,
    end: datetime,
    start: datetime | None = None,
    incremental: bool = False,
    usecase: UseCase | None = None,
) -> dict[str, int]:
    """Newest values into the online store: every view, or those the use case's feature service reads."""
    store = FeatureStore(config)
    views = None
    if usecase is not None:
        stored = store.registry.feature_views()
        service = store.registry.feature_service(usecase.feature_service)
        views = sorted({ref.partition(":")[0] for ref in service.features} & set(stored))
    if incremental:
        return store.materialize_incremental(end, views)
    return store.materialize(start, end, views)


# ---- the default retraining pipeline's steps (``dag.DEFAULT_STEPS``) ---------------------------
# Each takes a ``StepContext`` and a dict of its declared inputs and returns its declared outputs
# (JSON values); an undeclared ``detail`` entry goes to the run's history record only.


def source_tables(store: FeatureStore, usecase: UseCase) -> list[str]:
    """Tables whose versions a run pins: those with expectations, and the sources of the service's views."""
    tables = [e.table for e in usecase.expectations]
    services = store.registry.feature_services()
    if usecase.feature_service in services:
        views = store.registry.feature_views()
        for ref in services[usecase.feature_service].features:
            view = views.get(ref.partition(":")[0])
            if view is not None:
                tables.append(view.source.table)
    return sorted(set(tables))


def ingest(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """Build the offline tables when asked to or when one is missing; apply the definitions; pin versions."""
    config, usecase = ctx.config, ctx.usecase
    store = FeatureStore(config)
    missing = [t for t in source_tables(store, usecase) if not store.offline.exists(t)]
    unknown = not usecase.expectations and usecase.feature_service not in store.registry.feature_services()
    rebuild = bool(inputs["params"].get("rebuild"))
    if rebuild or missing or unknown:
        build_features(config, usecase)
    else:
        required = [load_usecase(name, config.usecases, check_all=False) for name in usecase.requires]
        for uc in [*required, usecase]:
            store.apply(list(uc.definitions), by=f"pipeline:{ctx.run_id}")
    versions = {table: store.offline.version(table) for table in source_tables(store, usecase)}
    definitions = fingerprint.definitions_digest(store.registry.document(), usecase.feature_service)
    why = "rebuilt on request" if rebuild else f"missing {missing}" if missing else "first run" if unknown else ""
    detail = {"built_features": bool(why), "why": why, "registry_version": store.registry.version}
    return {"table_versions": versions, "definitions": definitions, "detail": detail}


def validate(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    expectations = list(ctx.usecase.expectations)
    store = FeatureStore(ctx.config)
    if not expectations:
        report: dict[str, Any] = {"note": f"use case '{ctx.usecase.name}' declares no expectations"}
    else:
        report = validation.validate(
            store.offline, expectations, inputs["table_versions"], parse_as_of(inputs["as_of"])
        )
    token = fingerprint.digest(
        {"versions": inputs["table_versions"], "expectations": [e.to_dict() for e in expectations]}
    )
    return {"validated": token, "detail": report}


def build_training_set(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    store = FeatureStore(ctx.config)
    ts = trainer.build_training_set(store, ctx.usecase, inputs["table_versions"], parse_as_of(inputs["as_of"]))
    columns = [*ts.features, ts.label, ts.split_column]
    buffer = io.BytesIO()
    ts.frame[columns].reset_index(drop=True).to_parquet(buffer, index=False)
    key = ctx.put_artifact("training_set.parquet", buffer.getvalue())
    lineage = {
        "table_versions": ts.table_versions,
        "registry_version": ts.registry_version,
        "features": ts.features,
        "label": ts.label,
        "split_column": ts.split_column,
        "rows": {name: len(ts.split(name)) for name in trainer.SPLITS},
        "as_of": inputs["as_of"],
    }
    lineage["training_set_sha256"] = load_training_set(ctx, key, lineage).digest()
    return {"training_set": key, "lineage": lineage}


def load_training_set(ctx: StepContext, key: str, lineage: dict[str, Any]) -> trainer.TrainingSet:
    frame = pd.read_parquet(io.BytesIO(ctx.get_artifact(key)))
    return trainer.TrainingSet(
        frame,
        list(lineage["features"]),
        lineage["label"],
        lineage["split_column"],
        dict(lineage["table_versions"]),
        int(lineage["registry_version"]),
    )


def _load_booster(ctx: StepContext, key: str) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(bytearray(ctx.get_artifact(key)))
    return booster


def booster_digest(booster: xgb.Booster) -> str:
    return hashlib.sha256(bytes(booster.save_raw("ubj"))).hexdigest()


def train_model(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    usecase, params = ctx.usecase, inputs["params"]
    assert usecase.training is not None
    ts = load_training_set(ctx, inputs["training_set"], inputs["lineage"])
    fitted = trainer.fit(
        ctx.config,
        ts,
        usecase=usecase.name,
        spec=usecase.training,
        model_name=usecase.model_name,
        num_samples=int(params.get("trials") or 8),
        num_boost_round=int(params.get("rounds") or usecase.training.num_boost_round),
        seed=int(params.get("seed", trainer.DEFAULT_SEED)),
    )
    key = ctx.put_artifact("model.ubj", bytes(fitted.booster.save_raw("ubj")))
    summary = {k: v for k, v in vars(fitted).items() if k not in ("booster", "trials")}
    summary["trials"] = [vars(t) for t in fitted.trials]
    summary["model_sha256"] = booster_digest(fitted.booster)
    return {"model": key, "fit": json.loads(json.dumps(summary, default=str))}


def _better(mode: str, a: float, b: float) -> bool:
    return a > b if mode == "max" else a < b


def evaluate(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """The challenger against the baseline (it must beat it) and the champion, on the same test rows."""
    usecase, fit_ = ctx.usecase, inputs["fit"]
    assert usecase.training is not None
    spec = usecase.training
    ts = load_training_set(ctx, inputs["training_set"], inputs["lineage"])
    test = ts.split("test")
    out: dict[str, Any] = {
        "metric": spec.metric,
        "challenger": fit_["test_score"],
        "baseline": fit_["baseline_score"],
        "champion_version": None,
        "champion": None,
        "beats_champion": None,
    }
    if not _better(spec.mode, fit_["test_score"], fit_["baseline_score"]):
        raise PipelineError(
            f"challenger's test {spec.metric} {fit_['test_score']:.4f} does not beat the baseline "
            f"{fit_['baseline_score']:.4f}; nothing is registered"
        )
    try:
        champion = tracking.resolve(ctx.config.mlflow, usecase.model_name, alias=tracking.CHAMPION)
    except ModelNotFoundError:
        return {"evaluation": out}
    booster, model_spec = mlflow_model.load_model(ctx.config.mlflow, champion)
    out["champion_version"] = champion.version
    if all(c in test.columns for c in model_spec.feature_columns):
        truth = test[ts.label].to_numpy()
        out["champion"] = score(spec.metric, truth, predict(booster, test, list(model_spec.feature_columns)))
        out["beats_champion"] = _better(spec.mode, fit_["test_score"], out["champion"])
    return {"evaluation": out}


def register_challenger(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """A model version with alias ``challenger``; one per cache key, however often the step is retried."""
    usecase, fit_, evaluation, lineage = ctx.usecase, inputs["fit"], inputs["evaluation"], inputs["lineage"]
    assert usecase.training is not None
    for mv in tracking.list_versions(ctx.config.mlflow, usecase.model_name):
        if mv.tags.get("pipeline_step_key") == ctx.key:
            if tracking.CHALLENGER not in mv.aliases:
                tracking.client(ctx.config.mlflow).set_registered_model_alias(
                    usecase.model_name, tracking.CHALLENGER, mv.version
                )
            return {"model_version": mv.version, "detail": "registered by an earlier attempt"}
    ts = load_training_set(ctx, inputs["training_set"], lineage)
    fitted = trainer.Fit(
        booster=_load_booster(ctx, inputs["model"]),
        best_config=fit_["best_config"],
        valid_score=fit_["valid_score"],
        test_score=fit_["test_score"],
        baseline_score=fit_["baseline_score"],
        rows=fit_["rows"],
        trials=[TrialSummary(**t) for t in fit_["trials"]],
        num_boost_round=fit_["num_boost_round"],
        seed=fit_["seed"],
    )
    champion = evaluation.get("champion")
    report = trainer.register(
        ctx.config,
        ts,
        fitted,
        usecase=usecase.name,
        spec=usecase.training,
        feature_service=usecase.feature_service,
        model_name=usecase.model_name,
        alias=tracking.CHALLENGER,
        extra_tags={
            "pipeline_run": ctx.run_id,
            "pipeline_step_key": ctx.key,
            "definitions_sha256": inputs["definitions"],
            "as_of": lineage.get("as_of") or "",
            "code_version": inputs["code"]["source"],
            "git_commit": inputs["code"]["git"],
            "model_sha256": fit_["model_sha256"],
            "champion_version": str(evaluation.get("champion_version") or ""),
            f"champion_test_{evaluation['metric']}": "" if champion is None else f"{champion:.4f}",
        },
    )
    FeatureStore(ctx.config).registry.record_consumer(
        usecase.feature_service, report.model_name, report.model_version, by=f"pipeline:{ctx.run_id}"
    )
    verdict = gate.evaluate_and_record(ctx.config, usecase, ts.split("test"), ts.label, report.model_version)
    return {"model_version": report.model_version, "detail": {"gate": verdict.summary()}}


def start_canary(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """The hand-over to the rollout: calls ``pipelines.canary`` when one is configured, else does nothing."""
    hook = ctx.config.pipelines.canary
    if not hook:
        return {"canary": "not started: no canary hook is configured (pipelines.canary)"}
    module, _, name = hook.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PipelineError(f"canary hook '{hook}' cannot be imported: {exc}") from exc
    return {"canary": str(fn(ctx.config, ctx.usecase, inputs["model_version"]))}
