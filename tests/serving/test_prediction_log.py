"""The prediction log buffers without blocking, drops (and counts) what does not fit, and flushes in
batches to a real Delta table that the drift triggers and the rollout analysis read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ml_system.config_rollout import PredictionLogConfig
from ml_system.features import FeatureStore
from ml_system.pipelines.triggers import DeltaPredictionLog
from ml_system.serving.prediction_log import DigestMemo, LoggedPrediction, PredictionLog, input_digest
from tests.conftest import make_config


def rows(n: int, request: str, version: str = "3") -> list[LoggedPrediction]:
    at = datetime(2013, 12, 31, 17, tzinfo=UTC)
    out = []
    for i in range(n):
        entity, digest = input_digest({"carrier": "UA", "flight": i}, at)
        out.append(
            LoggedPrediction(request, datetime.now(UTC), at, "flight_delay", version, "champion", entity, digest,
                             0.1 * i, "ok", 4.0)
        )  # fmt: skip
    return out


def test_a_full_buffer_drops_and_counts_and_a_flush_writes_one_commit(tmp_path: Path) -> None:
    config = make_config(tmp_path / "mlsys")
    offline = FeatureStore(config).offline
    settings = PredictionLogConfig(buffer_rows=10, flush_rows=1000, flush_interval_s=3600)
    plog = PredictionLog(offline, settings)

    async def scenario() -> None:
        plog.add(rows(4, "a"))
        plog.add(rows(4, "b"))
        plog.add(rows(4, "c"))  # two fit, two are dropped
        assert len(plog.buffer) == 10 and plog.dropped == 2
        assert await plog.flush() == 10
        plog.add(rows(3, "d"))
        assert await plog.flush() == 3

    asyncio.run(scenario())
    assert plog.describe()["prediction_log"] == {
        "enabled": True, "table": "prediction_log", "buffered": 0, "written": 13, "dropped": 2,
        "write_failed": 0, "flushes": 2,
    }  # fmt: skip
    table = offline.read_pandas("prediction_log")
    assert len(table) == 13 and offline.version("prediction_log") == 1  # two commits: versions 0 and 1
    assert sorted(table["request_id"].unique()) == ["a", "b", "c", "d"]
    assert table["input_sha256"].str.len().eq(64).all() and set(table["arm"]) == {"champion"}
    # the drift triggers read the same table by name
    window = DeltaPredictionLog(FeatureStore(config), "prediction_log").window(
        "flight_delay", datetime(2013, 12, 1, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)
    )
    assert len(window) == 13


def test_the_background_task_flushes_once_enough_rows_wait(tmp_path: Path) -> None:
    config = make_config(tmp_path / "mlsys")
    offline = FeatureStore(config).offline
    plog = PredictionLog(offline, PredictionLogConfig(buffer_rows=100, flush_rows=5, flush_interval_s=3600))

    async def scenario() -> None:
        plog.add(rows(6, "x"))  # past flush_rows: the task wakes without waiting for the interval
        for _ in range(200):
            if plog.written:
                break
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert plog.written == 6 and len(offline.read_pandas("prediction_log")) == 6


def test_a_failed_write_is_counted_and_never_raises(tmp_path: Path) -> None:
    config = make_config(tmp_path / "mlsys")
    offline = FeatureStore(config).offline
    offline.write_pandas("prediction_log", __import__("pandas").DataFrame({"other": [1]}))  # a clashing schema
    plog = PredictionLog(offline, PredictionLogConfig())

    async def scenario() -> int:
        plog.add(rows(3, "y"))
        return await plog.flush()

    assert asyncio.run(scenario()) == 0
    assert plog.failed == 3 and plog.written == 0


def test_the_analysis_reads_only_the_rollouts_versions_logged_since_the_step_began(tmp_path: Path) -> None:
    from ml_system.rollout.analysis import read_log

    config = make_config(tmp_path / "mlsys")
    plog = PredictionLog(FeatureStore(config).offline, PredictionLogConfig())

    async def scenario() -> None:
        for request, version in (("a", "3"), ("b", "4"), ("c", "9")):
            plog.add(rows(2, request, version))
            await plog.flush()

    asyncio.run(scenario())
    hour_ago, in_an_hour = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    assert sorted(read_log(config, "flight_delay", ("3", "4"), hour_ago)["request_id"]) == ["a", "a", "b", "b"]
    assert read_log(config, "flight_delay", ("3", "4"), in_an_hour).empty
    assert read_log(config, "arrival_delay", ("3", "4"), hour_ago).empty


def test_the_digest_memo_answers_what_input_digest_answers() -> None:
    """Remembered digests are the same strings, for repeated and new rows, past the memo's bound and
    for values that cannot be a dict key."""
    at = datetime(2013, 12, 31, 17, tzinfo=UTC)
    memo = DigestMemo(entries=3)
    entities = [{"carrier": "UA", "flight": i, "sched": at + timedelta(hours=i)} for i in range(5)]
    for _ in range(2):
        for entity in entities:
            assert memo(entity, at) == input_digest(entity, at)
    assert len(memo.known) <= 3
    assert memo({"carrier": "UA"}, at) != memo({"carrier": "UA"}, at + timedelta(minutes=1))
    listed = {"carrier": "UA", "legs": [1, 2]}
    assert memo(listed, at) == input_digest(listed, at)
