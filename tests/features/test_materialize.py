"""Materialization on the shared Ray cluster: an interrupted run resumes to exactly the
state of a clean run, and bad input writes nothing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from ml_system.errors import EntityDataError, StoreError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from ml_system.features.materialize import WriteLatest
from ml_system.features.online import entity_key
from tests.conftest import make_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate"), Field("trips")], DeltaSource("stats"), owner="team-a")
KEYS = [entity_key([k]) for k in range(20)]


def at(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def rows(hour: int, value: float) -> pd.DataFrame:
    stamp = pd.Timestamp("2024-01-02", tz="UTC") + pd.Timedelta(hours=hour)
    return pd.DataFrame(
        {
            "driver_id": range(20),
            "event_timestamp": [stamp] * 20,
            "created_timestamp": [stamp] * 20,
            "rate": [value + k / 100 for k in range(20)],
            "trips": [float(hour)] * 20,
        }
    )


class FailsOnce(WriteLatest):
    """Writes half of its batch and dies, the first time only: a worker lost mid-write."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        marker = Path(self.online.path).with_suffix(".failed-once")
        if not marker.exists():
            marker.touch()
            super().__call__(batch.iloc[: max(1, len(batch) // 2)])
            raise RuntimeError("injected failure after a partial write")
        return super().__call__(batch)


def two_stores(tmp_path: Path) -> tuple[FeatureStore, FeatureStore]:
    """Same offline store and registry, separate online stores: one clean, one interrupted."""
    home = tmp_path / "mlsys"
    clean = FeatureStore(make_config(home, MLSYS_ONLINE_STORE__PATH=str(tmp_path / "clean.db")))
    broken = FeatureStore(make_config(home, MLSYS_ONLINE_STORE__PATH=str(tmp_path / "broken.db")))
    return clean, broken


def test_an_interrupted_materialization_resumes_without_gaps(tmp_path: Path) -> None:
    clean, broken = two_stores(tmp_path)
    clean.offline.write_pandas("stats", rows(0, 1.0), mode="overwrite")
    clean.apply([driver, stats])
    for store in (clean, broken):
        store.materialize_incremental(at("2024-01-02 00:30"))
    for hour in (1, 2, 3):  # three more files, so the next run reads several blocks
        clean.offline.write_pandas("stats", rows(hour, float(hour + 1)), mode="append")
    before = broken.online.read("stats", KEYS)

    with pytest.raises(Exception, match="injected failure"):  # Ray wraps the worker's error
        broken.materialize_incremental(at("2024-01-02 05:00"), writer=FailsOnce)
    partial = broken.online.read("stats", KEYS)
    assert partial != before, "the failed run should have written part of its rows"
    assert broken.materialized_until("stats") == at("2024-01-02 00:30"), "watermark moved past unwritten rows"

    clean.materialize_incremental(at("2024-01-02 05:00"))
    assert partial != clean.online.read("stats", KEYS)
    broken.materialize_incremental(at("2024-01-02 05:00"), writer=FailsOnce)  # the resumed run
    assert broken.online.read("stats", KEYS) == clean.online.read("stats", KEYS)
    assert broken.materialized_until("stats") == clean.materialized_until("stats") == at("2024-01-02 05:00")
    assert [r.values[1] for r in broken.online.read("stats", KEYS)] == [3.0] * 20  # type: ignore[union-attr]


def test_a_failed_materialization_leaves_the_online_store_as_it_was(platform_config) -> None:
    store = FeatureStore(platform_config)
    store.offline.write_pandas("stats", rows(0, 1.0), mode="overwrite")
    later = FeatureView("later", [driver], [Field("score")], DeltaSource("not_loaded_yet"))
    store.apply([driver, stats, later])  # allowed: the table may be loaded after the definition
    with pytest.raises(StoreError, match="not_loaded_yet"):
        store.materialize(None, at("2024-01-03"))
    with pytest.raises(EntityDataError, match="naive"):
        store.materialize(None, datetime(2024, 1, 3), views=["stats"])
    assert store.online.read("stats", KEYS) == [None] * 20
    assert store.materialized_until("stats") is None
    assert store.materialize(None, at("2024-01-03"), views=["stats"]) == {"stats": 20}
