"""The steps of a use case's loop, shared by the CLI, ``jobs/``, the quickstart and the tests.

Each step is a plain function over a ``PlatformConfig`` and a use case, so the same code runs
from ``mlsys``, from ``ray job submit`` and from a test, for every use case.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.training.trainer import TrainReport, train_usecase
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
    return train_usecase(
        config,
        usecase,
        num_samples=num_samples,
        num_boost_round=num_boost_round,
        on_trial_done=on_trial_done,
        on_stage=on_stage,
        admission=admission,
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
