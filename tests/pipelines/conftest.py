"""A tiny use case's platform, and one pipeline run of it, shared by the pipeline tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from ml_system.config import PlatformConfig, load_config
from ml_system.features import FeatureStore
from ml_system.pipelines.history import RunRecord
from ml_system.pipelines.runner import RunParams, run_pipeline
from ml_system.usecase import UseCase, load_usecase
from tests.pipelines import tiny_usecase

TINY = "tests.pipelines.tiny_usecase:usecase"
PARAMS = RunParams(trials=2, rounds=20)


def tiny_config(home: Path, **pipelines: object) -> PlatformConfig:
    """A config naming the tiny use case; ``pipelines`` fields (schedules, triggers) go into a YAML file."""
    home.mkdir(parents=True, exist_ok=True)
    data = {"home": str(home), "usecases": {"tiny": TINY}, "pipelines": {"tick_s": 0.3, "lease_s": 2, **pipelines}}
    path = home / "mlsys.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={})


def tiny(config: PlatformConfig) -> UseCase:
    return load_usecase("tiny", config.usecases)


def fresh_tiny(home: Path, end: datetime | None = None, **pipelines: object) -> PlatformConfig:
    """A home whose tiny tables end at ``end`` (now by default)."""
    config = tiny_config(home, **pipelines)
    tiny_usecase.write_tables(FeatureStore(config).offline, end or datetime.now(UTC))
    return config


@dataclass
class TinyRun:
    config: PlatformConfig
    first: RunRecord
    second: RunRecord


@pytest.fixture(scope="session")
def tiny_run(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Two runs of the tiny pipeline on one home: the second finds every cacheable step cached."""
    config = fresh_tiny(tmp_path_factory.mktemp("tiny") / "mlsys")
    first = run_pipeline(config, tiny(config), params=PARAMS)
    assert first.status == "succeeded", first.error
    second = run_pipeline(config, tiny(config), params=PARAMS)
    return TinyRun(config, first, second)


def copy_home(config: PlatformConfig, to: Path) -> PlatformConfig:
    """An independent copy of a tiny home (MLflow's artifacts stay where they are: read only)."""
    shutil.copytree(config.home, to, ignore=shutil.ignore_patterns("ray_results", "mlsys.yaml"))
    return tiny_config(to)
