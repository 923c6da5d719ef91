"""Online data rollout: a reader thread runs through snapshot switches and rollbacks and
never gets an error or an answer mixing old and new data (SQLite and a real redis-server)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from ml_system.errors import StoreError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from tests.conftest import make_config, online_backend

pytestmark = pytest.mark.usefixtures("ray_cluster")

driver = Entity("driver", ["driver_id"])
VIEWS = [
    FeatureView("speed", [driver], [Field("speed")], DeltaSource("speed")),
    FeatureView("rating", [driver], [Field("rating")], DeltaSource("rating")),
]
N = 200


def frame(column: str, day: str, value: float) -> pd.DataFrame:
    stamp = pd.Timestamp(day, tz="UTC")
    return pd.DataFrame(
        {"driver_id": range(N), "event_timestamp": [stamp] * N, "created_timestamp": [stamp] * N, column: [value] * N}
    )


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    store = FeatureStore(make_config(tmp_path / "mlsys", **online_backend(request.param, request)))
    for view in VIEWS:
        store.offline.write_pandas(view.name, frame(view.name, "2024-01-01", 1.0), mode="overwrite")
    store.apply([driver, *VIEWS])
    return store


def at(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


def test_switch_and_rollback_are_atomic_for_readers(store: FeatureStore) -> None:
    store.materialize(None, at("2024-01-01 12:00"))  # the base data: every value 1.0
    for view in VIEWS:
        store.offline.write_pandas(view.name, frame(view.name, "2024-01-02", 2.0), mode="append")
    sid = store.load_snapshot(at("2024-01-02 12:00"))  # every value 2.0, not served yet
    reader = store.online_reader(["speed:speed", "rating:rating"])
    entity_rows = [{"driver_id": k} for k in range(N)]
    assert set(reader.read(entity_rows).values["speed"]) == {1.0}

    seen: list[frozenset[float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            try:
                answer = reader.read(entity_rows)
                seen.append(frozenset(answer.values["speed"]) | frozenset(answer.values["rating"]))
            except BaseException as exc:  # noqa: BLE001 - any error is a failure of the test
                errors.append(exc)

    thread = threading.Thread(target=read_forever)
    thread.start()
    try:
        for _ in range(5):
            time.sleep(0.05)
            assert store.activate_snapshot(sid) == ""
            time.sleep(0.05)
            assert store.rollback_snapshot() == ""
        time.sleep(0.05)
        store.activate_snapshot(sid)
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    mixed = [s for s in seen if len(s) != 1]
    assert mixed == [], f"{len(mixed)} of {len(seen)} answers mixed snapshots"
    assert {frozenset({1.0}), frozenset({2.0})} <= set(seen), "the reader never saw both snapshots"
    assert set(reader.read(entity_rows).values["rating"]) == {2.0}

    listing = {s.id: s for s in store.list_snapshots()}
    assert listing[sid].active and listing[sid].state == "ready"
    assert store.rollback_snapshot() == ""
    assert set(reader.read(entity_rows).values["rating"]) == {1.0}
    with pytest.raises(StoreError, match="roll back"):
        store.rollback_snapshot()


def test_a_failed_snapshot_load_changes_nothing_readers_see(store: FeatureStore) -> None:
    store.materialize(None, at("2024-01-01 12:00"))
    store.apply([FeatureView("ghost", [driver], [Field("x")], DeltaSource("no_such_table"))])
    with pytest.raises(StoreError, match="no_such_table"):
        store.load_snapshot(at("2024-01-02 12:00"))
    assert store.online.active_snapshot() == ""
    failed = [s for s in store.list_snapshots() if s.id]
    assert [s.state for s in failed] == ["failed"]
    with pytest.raises(StoreError, match="not ready"):
        store.activate_snapshot(failed[0].id)
    assert set(store.get_online_features(["speed:speed"], [{"driver_id": 1}]).values["speed"]) == {1.0}
