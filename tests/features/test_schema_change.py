"""A view's schema changes under online data already written: values keep their names.

Through the public API on both backends: ``apply`` a view, ``push`` rows online, ``apply``
it again with its fields reordered or extended, and read. ``plan`` shows a reorder.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pandas as pd
import pytest

from ml_system.features import DeltaSource, Entity, FeatureStatus, FeatureStore, FeatureView, Field
from tests.conftest import make_config, online_backend

driver = Entity("driver", ["driver_id"])


def view(*fields: str) -> FeatureView:
    return FeatureView("stats", [driver], [Field(f) for f in fields], DeltaSource("stats"))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    return FeatureStore(make_config(tmp_path / "mlsys", **online_backend(request.param, request)))


def rows(driver_id: int, **values: float) -> pd.DataFrame:
    now = pd.Timestamp.now(tz="UTC").floor("s")
    return pd.DataFrame({"driver_id": [driver_id], "event_timestamp": [now], "created_timestamp": [now], **values})


def read(store: FeatureStore, *features: str) -> dict[str, list[object]]:
    return store.get_online_features([f"stats:{f}" for f in features], [{"driver_id": 1}]).values


def test_a_reorder_never_swaps_values_and_plan_shows_it(store: FeatureStore) -> None:
    store.apply([driver, view("rate", "trips")])
    store.push("stats", rows(1, rate=[0.25], trips=[7.0]), to_offline=False)
    changes = store.plan([driver, view("trips", "rate")], prune=False)
    assert [str(c) for c in changes] == ["~ feature_view stats: schema order: ['rate', 'trips'] -> ['trips', 'rate']"]
    store.apply([driver, view("trips", "rate")])
    assert read(store, "rate", "trips") == {"rate": [0.25], "trips": [7.0]}
    store.push("stats", rows(2, rate=[0.5], trips=[8.0]), to_offline=False)  # written in the new order
    both = store.get_online_features(["stats:rate", "stats:trips"], [{"driver_id": 1}, {"driver_id": 2}])
    assert both.values == {"rate": [0.25, 0.5], "trips": [7.0, 8.0]}


def test_an_added_field_reads_missing_in_old_rows_never_an_error(store: FeatureStore) -> None:
    store.apply([driver, view("rate", "trips")])
    store.push("stats", rows(1, rate=[0.25], trips=[7.0]), to_offline=False)
    store.apply([driver, view("rate", "trips", "speed")])
    out = store.get_online_features(["stats:rate", "stats:trips", "stats:speed"], [{"driver_id": 1}])
    assert out.values == {"rate": [0.25], "trips": [7.0], "speed": [None]}
    assert out.statuses["speed"] == [FeatureStatus.NOT_FOUND] and out.statuses["rate"] == [FeatureStatus.PRESENT]
    store.push("stats", rows(2, rate=[0.5], trips=[8.0], speed=[30.0]), to_offline=False)
    two = store.get_online_features(["stats:speed", "stats:rate"], [{"driver_id": 1}, {"driver_id": 2}])
    assert two.values == {"speed": [None, 30.0], "rate": [0.25, 0.5]}
    store.apply([driver, view("speed", "rate")])  # and a removed one is simply not read
    assert read(store, "rate", "speed") == {"rate": [0.25], "speed": [None]}


def test_rows_written_before_layouts_keep_their_names_across_a_reorder(tmp_path: Path) -> None:
    """``apply`` records the registered order for unlabelled rows before it changes the order."""
    store = FeatureStore(make_config(tmp_path / "mlsys"))
    store.apply([driver, view("rate", "trips")])
    store.push("stats", rows(1, rate=[0.0], trips=[0.0]), to_offline=False)
    conn = sqlite3.connect(store.config.online_store.path)  # the row as the previous release stored it
    conn.execute("UPDATE fv_stats SET payload = ?", (msgpack.packb([0.25, 7.0]),))
    conn.commit()
    conn.close()
    assert read(store, "rate", "trips") == {"rate": [0.25], "trips": [7.0]}
    store.apply([driver, view("trips", "rate")])
    assert read(store, "rate", "trips") == {"rate": [0.25], "trips": [7.0]}
