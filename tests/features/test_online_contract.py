"""The online store contract, run against every backend in ``ONLINE_STORE_CLASS_FOR_TYPE``.

Each backend is opened the way the platform opens it (a validated ``online_store`` config,
``open_online_store``); Redis runs twice, on its own RESP read link and on redis-py's
(``fast_read_link: false``). SQLite lives in a file under tmp_path; Redis is the session's
private ``redis-server``, emptied per test. A backend added to the table without a way to
open it here fails ``test_every_backend_in_the_table_runs_the_contract``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from pydantic import TypeAdapter

from ml_system.config import OnlineStoreConfig
from ml_system.errors import DefinitionError, EntityDataError, StoreError
from ml_system.features import Entity, FeatureStatus, FeatureView, Field, OnlineFeatureReader
from ml_system.features.definitions import DeltaSource
from ml_system.features.online import ONLINE_STORE_CLASS_FOR_TYPE, OnlineStore, entity_key, open_online_store

NOW = pd.Timestamp("2024-03-01 12:00", tz="UTC")
HOUR = 3_600_000_000_000


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return {"type": "sqlite", "path": str(tmp_path / "online.db")}


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return {"type": "redis", "redis_url": url}


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], dict[str, Any]]] = {"sqlite": _sqlite, "redis": _redis}
VARIANTS = {"sqlite": ("sqlite", {}), "redis": ("redis", {}), "redis-py-link": ("redis", {"fast_read_link": False})}


def open_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> OnlineStore:
    kind, extra = VARIANTS[name]
    config = TypeAdapter(OnlineStoreConfig).validate_python({**BACKENDS[kind](request, tmp_path), **extra})
    return open_online_store(config)


@pytest.fixture(params=list(VARIANTS))
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    store = open_backend(request.param, request, tmp_path)
    yield store
    store.close()


driver = Entity("driver", ["driver_id"])
trip = Entity("trip", ["driver_id", "city"])
STATS_FIELDS = ("rate", "trips", "label")
stats = FeatureView(
    "stats",
    [driver],
    [Field("rate"), Field("trips", "int64"), Field("label", "string")],
    DeltaSource("s"),
    ttl=timedelta(hours=2),
)
city = FeatureView("city", [trip], [Field("city_rate")], DeltaSource("c"), ttl=None)
VIEWS = {"stats": stats, "city": city}


def test_every_backend_in_the_table_runs_the_contract() -> None:
    assert set(BACKENDS) == set(ONLINE_STORE_CLASS_FOR_TYPE)
    assert {kind for kind, _ in VARIANTS.values()} == set(ONLINE_STORE_CLASS_FOR_TYPE)


def test_values_round_trip_exactly_with_their_types(online: OnlineStore) -> None:
    values = [0.1 + 0.2, 2**62, "naïve ☃", None, True, -0.0, 1e-310]
    online.write_batch("stats", [("1", 5, 5, values)], fields=[f"f{i}" for i in range(len(values))])
    (row,) = online.read("stats", ["1"])
    assert row is not None
    assert row.values == values and [type(v) for v in row.values] == [type(v) for v in values]
    assert (row.event_ts, row.created_ts) == (5, 5)


def test_upsert_keeps_the_newer_row_whatever_the_write_order(online: OnlineStore) -> None:
    ev = NOW.value

    def write(event: int, created: int, values: list[Any]) -> None:
        online.write_batch("stats", [("1", event, created, values)], fields=STATS_FIELDS)

    write(ev, ev, [1.0, 1, "a"])
    write(ev - HOUR, ev + HOUR, [0.0, 0, "older event"])  # older event loses
    write(ev, ev - 1, [0.5, 0, "older write"])  # same event, older created loses
    assert online.read("stats", ["1"])[0].values == [1.0, 1, "a"]  # type: ignore[union-attr]
    write(ev, ev + 1, [2.0, 2, "correction"])  # same event, newer created wins
    write(ev + 1, 0, [3.0, 3, "newer event"])  # newer event wins
    assert online.read("stats", ["1"])[0].values == [3.0, 3, "newer event"]  # type: ignore[union-attr]


def test_batch_read_keeps_order_duplicates_and_misses(online: OnlineStore) -> None:
    online.write_batch("stats", [(str(i), i, i, [float(i), i, str(i)]) for i in range(200)], fields=STATS_FIELDS)
    keys = ["5", "nope", "5", "199", *[str(i) for i in range(100)]]
    rows = online.read("stats", keys)
    assert rows[1] is None
    assert [None if r is None else r.values[1] for r in rows] == [5, None, 5, 199, *range(100)]
    assert online.read("stats", []) == []
    assert online.read("never_written", ["1"]) == [None]
    with pytest.raises(StoreError, match="2 values for 3 fields"):
        online.write_batch("stats", [("1", 1, 1, [1.0, 2])], fields=STATS_FIELDS)


def test_reader_statuses_present_not_found_expired(online: OnlineStore) -> None:
    online.write_batch(
        "stats",
        [("1", NOW.value - HOUR, 0, [0.5, 7, "x"]), ("2", NOW.value - 3 * HOUR, 0, [0.9, 9, "y"])],
        fields=STATS_FIELDS,
    )
    online.write_batch("city", [("1|nyc", 0, 0, [4.0])], fields=["city_rate"])
    reader = OnlineFeatureReader(online, VIEWS, ["stats:rate", "stats:label", "city:city_rate"])
    rows = [{"driver_id": 1, "city": "nyc"}, {"driver_id": 2, "city": "nyc"}, {"driver_id": 3, "city": "sf"}]
    out = reader.read(rows, now=NOW.to_pydatetime())
    assert out.values == {"rate": [0.5, None, None], "label": ["x", None, None], "city_rate": [4.0, None, None]}
    assert out.statuses["rate"] == [FeatureStatus.PRESENT, FeatureStatus.EXPIRED, FeatureStatus.NOT_FOUND]
    assert out.statuses["city_rate"] == [FeatureStatus.PRESENT, FeatureStatus.NOT_FOUND, FeatureStatus.NOT_FOUND]
    # the TTL bound is exclusive, and a per-row clock moves it row by row
    clocks = [(NOW + pd.Timedelta(hours=1)).to_pydatetime(), (NOW - pd.Timedelta(hours=2)).to_pydatetime()]
    edge = reader.read(rows[:2], now=clocks)
    assert edge.statuses["rate"] == [FeatureStatus.EXPIRED, FeatureStatus.PRESENT]
    out.statuses["rate"][0] = FeatureStatus.EXPIRED  # each feature owns its status list
    assert out.statuses["label"][0] is FeatureStatus.PRESENT


def test_reader_names_a_missing_join_key(online: OnlineStore) -> None:
    reader = OnlineFeatureReader(online, VIEWS, ["city:city_rate"])
    with pytest.raises(EntityDataError, match="entity row 1 lacks join key 'city'"):
        reader.read([{"driver_id": 1, "city": "nyc"}, {"driver_id": 2}])


def test_rows_written_under_another_field_order_are_read_by_name(online: OnlineStore) -> None:
    """Reordered, added and removed fields: values follow their names; a field a row lacks is missing."""
    online.write_batch("stats", [("1", NOW.value, 0, [0.25, 7, "old"])], fields=["rate", "trips", "label"])
    reordered = FeatureView(
        "stats", [driver], [Field("trips", "int64"), Field("rate"), Field("speed")], DeltaSource("s")
    )
    online.write_batch("stats", [("2", NOW.value, 0, [8, 0.5, 30.0])], fields=reordered.feature_names)
    reader = OnlineFeatureReader(online, {"stats": reordered}, ["stats:rate", "stats:trips", "stats:speed"])
    out = reader.read([{"driver_id": 1}, {"driver_id": 2}, {"driver_id": 3}], now=NOW.to_pydatetime())
    assert out.values == {"rate": [0.25, 0.5, None], "trips": [7, 8, None], "speed": [None, 30.0, None]}
    assert out.statuses["speed"] == [FeatureStatus.NOT_FOUND, FeatureStatus.PRESENT, FeatureStatus.NOT_FOUND]
    assert out.statuses["rate"][0] is FeatureStatus.PRESENT
    # the old layout's reader still reads both rows by name, a dropped field ("label") as missing
    old = OnlineFeatureReader(online, {"stats": stats}, ["stats:rate", "stats:label"])
    assert old.read([{"driver_id": 1}, {"driver_id": 2}], now=NOW.to_pydatetime()).values == {
        "rate": [0.25, 0.5],
        "label": ["old", None],
    }


def test_delete_removes_only_the_named_entities(online: OnlineStore) -> None:
    online.write_batch("stats", [(str(i), 1, 1, [float(i), i, "x"]) for i in range(5)], fields=STATS_FIELDS)
    online.write_batch("stats", [("1", 1, 1, [9.0, 9, "s"])], "s1", fields=STATS_FIELDS)
    assert online.delete("stats", ["1", "3", "3", "nope"]) == 2
    assert [r is None for r in online.read("stats", [str(i) for i in range(5)])] == [False, True, False, True, False]
    assert online.read("stats", ["1"], "s1")[0] is not None  # other namespaces are the caller's choice
    assert online.delete("never_written", ["1"]) == 0


def test_composite_keys_do_not_collide(online: OnlineStore) -> None:
    assert entity_key(["a|b", "c"]) != entity_key(["a", "b|c"])
    assert entity_key(["a\\", "|c"]) != entity_key(["a\\|", "c"])
    assert entity_key(["1", "nyc"]) == "1|nyc"  # keys without separators are stored as they always were
    pair = FeatureView("pair", [Entity("p", ["x", "y"])], [Field("v")], DeltaSource("p"))
    rows = [{"x": "a|b", "y": "c"}, {"x": "a", "y": "b|c"}, {"x": "a\\", "y": "|c"}, {"x": "a\\|", "y": "c"}]
    keys = [entity_key([r["x"], r["y"]]) for r in rows]
    online.write_batch("pair", [(k, 1, 1, [float(i)]) for i, k in enumerate(keys)], fields=["v"])
    reader = OnlineFeatureReader(online, {"pair": pair}, ["pair:v"])
    assert reader.read(rows).values["v"] == [0.0, 1.0, 2.0, 3.0]


def test_integer_keys_are_found_whatever_number_type_the_request_uses(online: OnlineStore) -> None:
    typed = Entity("driver", ["driver_id"], value_type="int64")
    view = FeatureView("stats", [typed], [Field("rate")], DeltaSource("s"))
    online.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    reader = OnlineFeatureReader(online, {"stats": view}, ["stats:rate"])
    import numpy as np

    rows = [{"driver_id": 1}, {"driver_id": 1.0}, {"driver_id": "1"}, {"driver_id": np.int64(1)}, {"driver_id": None}]
    assert reader.read(rows).values["rate"] == [0.5, 0.5, 0.5, 0.5, None]
    with pytest.raises(EntityDataError, match=r"view 'stats': join key 'driver_id' is declared int64, but got 1\.5"):
        reader.read([{"driver_id": 1.5}])


def test_view_names_follow_the_one_rule_in_every_backend(online: OnlineStore) -> None:
    for bad in ("Stats", "a:b", "../x", "a__b"):
        with pytest.raises(DefinitionError, match="feature view name"):
            online.write_batch(bad, [("1", 1, 1, [1.0])], fields=["v"])
        with pytest.raises(DefinitionError, match="feature view name"):
            online.read(bad, ["1"])


def test_update_meta_is_one_atomic_step(online: OnlineStore) -> None:
    """Two writers incrementing one counter 100 times each: every increment lands."""

    errors: list[BaseException] = []

    def bump(store: OnlineStore) -> None:
        try:
            for _ in range(100):
                store.update_meta(["counter"], lambda values: {"counter": str(int(values[0] or 0) + 1)})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(online,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert online.get_meta("counter") == "200"
    online.update_meta(["counter", "other"], lambda values: {"counter": None, "other": "x"})
    assert online.get_meta_many(["counter", "other"]) == [None, "x"]
    assert "other" in online.meta_names()
