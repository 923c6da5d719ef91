"""``FeatureStore.push`` and ``delete``: offline once, online everywhere a reader may be switched to.

Real Delta tables, SQLite and the session's ``redis-server``; a snapshot load runs on the
session's Ray cluster.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from ml_system.errors import EntityDataError, StoreUnavailableError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from ml_system.features.online.base import BASE
from tests.conftest import free_port, make_config, online_backend

driver = Entity("driver", ["driver_id"], value_type="int64")
stats = FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"))


def frame(driver_ids: list[int], rate: float, when: pd.Timestamp | None = None) -> pd.DataFrame:
    stamp = when if when is not None else pd.Timestamp.now(tz="UTC").floor("ms")
    n = len(driver_ids)
    return pd.DataFrame(
        {"driver_id": driver_ids, "event_timestamp": [stamp] * n, "created_timestamp": [stamp] * n, "rate": [rate] * n}
    )


def open_store(home: Path, backend: str, request: pytest.FixtureRequest) -> FeatureStore:
    store = FeatureStore(make_config(home, **online_backend(backend, request)))
    store.apply([driver, stats])
    return store


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return open_store(tmp_path / "mlsys", request.param, request)


def rate(store: FeatureStore, *driver_ids: int) -> list[object]:
    return store.get_online_features(["stats:rate"], [{"driver_id": d} for d in driver_ids]).values["rate"]


def test_a_retried_push_appends_once_offline_and_once_online(store: FeatureStore) -> None:
    rows = frame([1, 2], 0.5)
    assert store.push("stats", rows) == 2
    version = store.offline.version("stats")
    assert store.push("stats", rows) == 2  # the retry: same rows, same default key
    assert store.offline.version("stats") == version
    assert len(store.offline.read_pandas("stats")) == 2
    assert rate(store, 1, 2) == [0.5, 0.5]
    batch = frame([1], 0.7)
    store.push("stats", batch, idempotency_key="batch-7")
    store.push("stats", batch, idempotency_key="batch-7")
    assert len(store.offline.read_pandas("stats")) == 3
    assert rate(store, 1) == [0.7]


def test_a_push_that_failed_after_its_offline_append_is_completed_by_retrying(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "mlsys"
    working = open_store(home, "sqlite", request)
    gone = FeatureStore(
        make_config(
            home,
            MLSYS_ONLINE_STORE__TYPE="redis",
            MLSYS_ONLINE_STORE__REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        )
    )
    rows = frame([1], 0.5)
    with pytest.raises(StoreUnavailableError):
        gone.push("stats", rows)  # appended offline, then the online write failed
    assert len(working.offline.read_pandas("stats")) == 1
    assert working.push("stats", rows) == 1  # the retry (here against a store that answers)
    assert len(working.offline.read_pandas("stats")) == 1
    assert rate(working, 1) == [0.5]


def test_rows_dated_past_the_clock_skew_are_refused_by_view_and_row(store: FeatureStore) -> None:
    future = pd.Timestamp("2099-01-01", tz="UTC")
    rows = pd.concat([frame([1], 0.1), frame([7], 0.9, future)], ignore_index=True)
    with pytest.raises(EntityDataError, match=r"push to feature view 'stats': row 1 \{'driver_id': .*7\}.*2099-01-01"):
        store.push("stats", rows)
    assert not store.offline.exists("stats") and rate(store, 1, 7) == [None, None]  # nothing written anywhere
    near = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=60)  # within the default 300 s
    assert store.push("stats", frame([1], 0.2, near)) == 1


def test_a_bad_key_or_missing_column_is_refused_before_anything_is_written(store: FeatureStore) -> None:
    with pytest.raises(EntityDataError, match=r"view 'stats': join key 'driver_id' is declared int64"):
        store.push("stats", frame([1], 0.1).astype({"driver_id": "float64"}).replace({"driver_id": {1.0: 1.5}}))
    with pytest.raises(EntityDataError, match=r"rows lack columns \['rate'\]"):
        store.push("stats", frame([1], 0.1).drop(columns=["rate"]))
    assert not store.offline.exists("stats")


def test_delete_removes_online_rows_in_every_switchable_snapshot(store: FeatureStore) -> None:
    store.push("stats", frame([1, 2], 0.5))
    store.online.write_batch("stats", [("1", 1, 1, [0.1])], "s1", fields=["rate"])
    from ml_system.features import snapshots

    snapshots.record(store.online, "s1", "2024-01-01", "ready")
    assert store.delete("stats", [{"driver_id": 1}, {"driver_id": 1.0}, {"driver_id": 3}]) == 1
    assert rate(store, 1, 2) == [None, 0.5]
    assert store.online.read("stats", ["1"], "s1") == [None]
    store.activate_snapshot("s1")
    assert rate(store, 1) == [None]
    assert len(store.offline.read_pandas("stats")) == 2  # offline history is kept
    with pytest.raises(EntityDataError, match="lacks join key 'driver_id'"):
        store.delete("stats", [{"driver": 1}])


def at(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


@pytest.mark.usefixtures("ray_cluster")
def test_a_push_between_snapshot_load_and_activation_survives_it(store: FeatureStore) -> None:
    store.offline.write_pandas("stats", frame([1, 2], 0.2, pd.Timestamp("2024-01-01", tz="UTC")), mode="overwrite")
    sid = store.load_snapshot(at("2024-01-02"))
    assert rate(store, 1) == [None]  # the base namespace serves; nothing was materialized there
    store.push("stats", frame([1], 0.9))
    assert rate(store, 1) == [0.9]
    store.activate_snapshot(sid)
    assert rate(store, 1, 2) == [0.9, 0.2]
    store.rollback_snapshot()  # and the push is in the namespace rolled back to as well
    assert rate(store, 1) == [0.9]
    assert store.online.read("stats", ["1"], BASE)[0].values == [0.9]  # type: ignore[union-attr]


def test_a_push_during_a_load_lands_in_the_loading_snapshot(store: FeatureStore) -> None:
    from ml_system.features import snapshots

    snapshots.record(store.online, "sloading", "2024-01-02", "loading")
    snapshots.record(store.online, "sfailed", "2024-01-02", "failed")
    store.push("stats", frame([1], 0.9))
    assert store.online.read("stats", ["1"], "sloading")[0].values == [0.9]  # type: ignore[union-attr]
    assert store.online.read("stats", ["1"], "sfailed") == [None]
