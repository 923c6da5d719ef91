"""Both online backends behind one interface: values, statuses, upsert-if-newer, one round trip per view.

SQLite runs on a file in tmp_path; Redis is the session's private
``redis-server`` on a free port, each test under its own key prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from ml_system.features import Entity, FeatureView, Field
from ml_system.features.definitions import DeltaSource
from ml_system.features.online import FeatureStatus, OnlineStore
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.sqlite import SqliteOnlineStore
from ml_system.features.store import OnlineFeatureReader

NOW = pd.Timestamp("2024-03-01 12:00", tz="UTC")
HOUR = 3_600_000_000_000


@pytest.fixture(params=["sqlite", "redis"])
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        store: OnlineStore = SqliteOnlineStore(str(tmp_path / "online.db"))
    else:
        store = RedisOnlineStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


driver = Entity("driver", ["driver_id"])
trip = Entity("trip", ["driver_id", "city"])
stats = FeatureView(
    "stats",
    [driver],
    [Field("rate"), Field("trips", "int64"), Field("label", "string")],
    DeltaSource("s"),
    ttl=timedelta(hours=2),
)
city = FeatureView("city", [trip], [Field("city_rate")], DeltaSource("c"), ttl=None)
VIEWS = {"stats": stats, "city": city}


def test_values_round_trip_exactly_with_their_types(online: OnlineStore) -> None:
    values = [0.1 + 0.2, 2**62, "naïve ☃", None, True, -0.0, 1e-310]
    online.write_batch("stats", [("1", 5, 5, values)])
    (row,) = online.read("stats", ["1"])
    assert row is not None
    assert row.values == values and [type(v) for v in row.values] == [type(v) for v in values]
    assert (row.event_ts, row.created_ts) == (5, 5)


def test_upsert_keeps_the_newer_row_whatever_the_write_order(online: OnlineStore) -> None:
    ev = NOW.value
    online.write_batch("stats", [("1", ev, ev, [1.0, 1, "a"])])
    online.write_batch("stats", [("1", ev - HOUR, ev + HOUR, [0.0, 0, "older event"])])  # older event loses
    online.write_batch("stats", [("1", ev, ev - 1, [0.5, 0, "older write"])])  # same event, older created loses
    assert online.read("stats", ["1"])[0].values == [1.0, 1, "a"]  # type: ignore[union-attr]
    online.write_batch("stats", [("1", ev, ev + 1, [2.0, 2, "correction"])])  # same event, newer created wins
    online.write_batch("stats", [("1", ev + 1, 0, [3.0, 3, "newer event"])])  # newer event wins
    assert online.read("stats", ["1"])[0].values == [3.0, 3, "newer event"]  # type: ignore[union-attr]


def test_batch_read_keeps_order_duplicates_and_misses(online: OnlineStore) -> None:
    online.write_batch("stats", [(str(i), i, i, [float(i), i, str(i)]) for i in range(200)])
    keys = ["5", "nope", "5", "199", *[str(i) for i in range(100)]]
    rows = online.read("stats", keys)
    assert rows[1] is None
    got = [None if r is None else r.values[1] for r in rows]
    assert got == [5, None, 5, 199, *range(100)]
    assert online.read("stats", []) == []
    assert online.read("never_written", ["1"]) == [None]


def test_reader_statuses_present_not_found_expired(online: OnlineStore) -> None:
    online.write_batch(
        "stats", [("1", NOW.value - HOUR, 0, [0.5, 7, "x"]), ("2", NOW.value - 3 * HOUR, 0, [0.9, 9, "y"])]
    )
    online.write_batch("city", [("1|nyc", 0, 0, [4.0])])
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
    from ml_system.errors import EntityDataError

    reader = OnlineFeatureReader(online, VIEWS, ["city:city_rate"])
    with pytest.raises(EntityDataError, match="entity row 1 lacks join key 'city'"):
        reader.read([{"driver_id": 1, "city": "nyc"}, {"driver_id": 2}])


def test_rows_in_the_first_json_format_still_read(tmp_path: Path, redis_url: str) -> None:
    sqlite = SqliteOnlineStore(str(tmp_path / "old.db"))
    sqlite.write_batch("stats", [("1", 1, 1, [0.0])])
    sqlite._conn().execute("UPDATE fv_stats SET payload = '[1.5, 2, \"a\"]'")
    assert sqlite.read("stats", ["1"])[0].values == [1.5, 2, "a"]  # type: ignore[union-attr]
    sqlite.close()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}:stats:1", f"{3:020d}{4:020d}" + '[1.5, null, "a"]')
    store = RedisOnlineStore(redis_url, prefix=prefix)
    row = store.read("stats", ["1"])[0]
    assert row is not None and (row.event_ts, row.created_ts, row.values) == (3, 4, [1.5, None, "a"])
    store.close()
    client.close()


def test_one_round_trip_per_view(tmp_path: Path, redis_url: str) -> None:
    """Observed on the servers' side: Redis command stats, SQLite's statement trace.

    Every request also reads the online snapshot pointer once (``active_snapshot``), so
    that all of its views answer from the same snapshot.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisOnlineStore(redis_url, prefix=prefix)
    store.write_batch("stats", [(str(i), NOW.value, 0, [1.0, 1, "a"]) for i in range(100)])
    store.write_batch("city", [(f"{i}|nyc", 0, 0, [1.0]) for i in range(100)])
    reader = OnlineFeatureReader(store, VIEWS, ["stats:rate", "stats:trips", "city:city_rate"])
    rows = [{"driver_id": i, "city": "nyc"} for i in range(100)]
    admin = redis.Redis.from_url(redis_url)
    admin.config_resetstat()
    out = reader.read(rows, now=NOW.to_pydatetime())
    stats_after = admin.info("commandstats")
    assert out.values["city_rate"] == [1.0] * 100
    calls = {name: s["calls"] for name, s in stats_after.items()}
    # one transaction sent as one packet: the snapshot pointer and both views' keys in one MGET
    assert calls.pop("cmdstat_multi") == 1 and calls.pop("cmdstat_exec") == 1
    assert calls.pop("cmdstat_hget") == 1 and calls.pop("cmdstat_mget") == 1
    # nothing else but our own RESETSTAT and the handshake of the reading connection opened by this first read
    assert all(name.startswith(("cmdstat_config", "cmdstat_client", "cmdstat_hello")) for name in calls), calls

    # a switch made elsewhere: the first read after it finds its guess stale and reads again, once
    other = RedisOnlineStore(redis_url, prefix=prefix)
    other.write_batch("stats", [(str(i), NOW.value, 0, [2.0, 2, "b"]) for i in range(100)], snapshot="s2")
    other.write_batch("city", [(f"{i}|nyc", 0, 0, [2.0]) for i in range(100)], snapshot="s2")
    other.set_meta("snapshot:active", "s2")
    admin.config_resetstat()
    out = reader.read(rows, now=NOW.to_pydatetime())
    assert out.values["rate"] == [2.0] * 100 and out.values["city_rate"] == [2.0] * 100
    assert admin.info("commandstats")["cmdstat_exec"]["calls"] == 2
    admin.config_resetstat()
    reader.read(rows, now=NOW.to_pydatetime())
    assert admin.info("commandstats")["cmdstat_exec"]["calls"] == 1
    other.close()
    store.close()
    admin.close()

    sqlite = SqliteOnlineStore(str(tmp_path / "trace.db"))
    sqlite.write_batch("stats", [(str(i), NOW.value, 0, [1.0, 1, "a"]) for i in range(100)])
    sqlite.write_batch("city", [(f"{i}|nyc", 0, 0, [1.0]) for i in range(100)])
    statements: list[str] = []
    sqlite._conn().set_trace_callback(statements.append)
    out = OnlineFeatureReader(sqlite, VIEWS, ["stats:rate", "stats:trips", "city:city_rate"]).read(
        rows, now=NOW.to_pydatetime()
    )
    assert out.values["trips"] == [1] * 100
    # the snapshot pointer once per request, then one query per view
    assert len(statements) == 3 and all(s.startswith("SELECT") for s in statements)
    assert "mlsys_meta" in statements[0]
    sqlite.close()


def test_redis_reads_survive_a_dropped_connection(redis_url: str) -> None:
    """Reads keep one pinned connection per thread; a server-side kill of it costs one retry, not an error."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisOnlineStore(redis_url, prefix=prefix)
    store.write_batch("city", [("1|nyc", 0, 0, [1.5])])
    reader = OnlineFeatureReader(store, VIEWS, ["city:city_rate"])
    assert reader.read([{"driver_id": 1, "city": "nyc"}]).values["city_rate"] == [1.5]
    admin = redis.Redis.from_url(redis_url)
    readers = [c["id"] for c in admin.client_list() if c["cmd"] == "exec"]  # the reading connection's last command
    assert readers
    for client_id in readers:
        assert admin.client_kill_filter(_id=client_id) == 1
    assert reader.read([{"driver_id": 1, "city": "nyc"}]).values["city_rate"] == [1.5]
    assert store.read("city", ["1|nyc"])[0].values == [1.5]  # type: ignore[union-attr]
    store.close()
    admin.close()
