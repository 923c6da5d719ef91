"""A step that fails after its retries fails the run, registers nothing and moves no alias; a retried
registration never registers twice; a version whose alias cannot be set is taken back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from ml_system.pipelines.runner import RunParams, run_pipeline
from ml_system.pipelines.storage import open_storage
from ml_system.training import tracking
from tests.pipelines.conftest import PARAMS, TinyRun, copy_home, tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _inject(config, step: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    storage = open_storage(config)
    storage.write(f"inject/{step}.json", json.dumps({"mode": mode}).encode())
    storage.write(f"inject/{step}.attempts", b"0")


def test_a_step_failing_after_its_retries_fails_the_run_and_changes_no_model(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    before = tracking.list_versions(config.mlflow, "tiny_failure")
    _inject(config, "evaluate", "always")
    run = run_pipeline(config, tiny(config), params=PARAMS)
    assert run.status == "failed"
    assert run.step("evaluate").status == "failed" and "OSError: injected failure" in run.step("evaluate").error
    assert run.step("register").status == "not_run" and run.step("start_canary").status == "not_run"
    step = tiny(config).pipeline_steps[0]
    assert int(open_storage(config).read("inject/evaluate.attempts") or b"0") == step.max_retries + 1
    after = tracking.list_versions(config.mlflow, "tiny_failure")
    assert [(m.version, m.aliases) for m in after] == [(m.version, m.aliases) for m in before]


def test_a_registration_retried_after_a_crash_registers_one_version(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    _inject(config, "register", "crash_once_after")
    run = run_pipeline(config, tiny(config), params=RunParams(trials=1, rounds=15, seed=11))
    assert run.status == "succeeded", run.error
    assert run.step("register").detail == "registered by an earlier attempt"
    assert int(open_storage(config).read("inject/register.attempts") or b"0") == 2
    key = run.step("register").cache_key
    mine = [m for m in tracking.list_versions(config.mlflow, "tiny_failure") if m.tags.get("pipeline_step_key") == key]
    assert len(mine) == 1 and mine[0].version == run.model_version and "challenger" in mine[0].aliases


def test_a_version_whose_alias_cannot_be_set_is_taken_back(tiny_run: TinyRun, tmp_path: Path) -> None:
    config = copy_home(tiny_run.config, tmp_path / "mlsys")
    existing = tracking.resolve(config.mlflow, "tiny_failure", version=tiny_run.first.model_version)
    before = len(tracking.list_versions(config.mlflow, "tiny_failure"))
    with pytest.raises(MlflowException):
        # MLflow refuses aliases that look like version numbers
        tracking.register_source(
            config.mlflow, "tiny_failure", existing.source, run_id=existing.run_id, tags={}, alias="v9"
        )
    assert len(tracking.list_versions(config.mlflow, "tiny_failure")) == before
