"""A backfill runs each slot of a range as of its own time: no row or feature after the slot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml_system.errors import PipelineError
from ml_system.pipelines.runner import RunParams
from ml_system.pipelines.scheduler import backfill
from ml_system.training import tracking
from tests.pipelines.conftest import fresh_tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_each_slot_builds_its_training_set_as_of_the_slot(ray_cluster: str, tmp_path: Path) -> None:
    config = fresh_tiny(tmp_path / "mlsys")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=2), today - timedelta(days=1)
    records = backfill(config, "tiny", start, end, "0 0 * * *", RunParams(trials=1, rounds=15))
    assert [r.as_of for r in records] == [start.isoformat(), end.isoformat()]
    assert all(r.status == "succeeded" for r in records), [r.error for r in records]
    rows = [r.step("build_training_set").outputs["lineage"]["rows"] for r in records]
    assert sum(rows[0].values()) < sum(rows[1].values())  # a day fewer of rows
    for record in records:
        mv = tracking.resolve(config.mlflow, "tiny_failure", version=record.model_version)
        assert mv.tags["as_of"] == record.as_of
        assert json.loads(mv.tags["table_versions"])  # pinned like any run
        validated = record.step("validate").detail
        assert validated["reference"] == record.as_of
    # the same range again resumes the same runs: every cacheable step is cached
    again = backfill(config, "tiny", start, end, "0 0 * * *", RunParams(trials=1, rounds=15))
    assert [r.run_id for r in again] == [r.run_id for r in records]
    assert {r.step("train").status for r in again} == {"cached"} and again[0].attempts == 2


def test_a_bad_range_is_refused_before_anything_runs(tmp_path: Path) -> None:
    config = fresh_tiny(tmp_path / "mlsys")
    now = datetime.now(UTC)
    with pytest.raises(PipelineError, match="before --start"):
        backfill(config, "tiny", now - timedelta(days=1), now - timedelta(days=2), "0 0 * * *", RunParams())
    with pytest.raises(PipelineError, match="in the future"):
        backfill(config, "tiny", now, now + timedelta(days=2), "0 0 * * *", RunParams())
    with pytest.raises(PipelineError, match="not a valid cron"):
        backfill(config, "tiny", now - timedelta(days=2), now, "every day", RunParams())
