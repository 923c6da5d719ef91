"""What each online backend does its own way: round trips, connections, rows in older formats.

The behaviour every backend shares is in ``test_online_contract.py``. SQLite runs on a
file in tmp_path; Redis is the session's private ``redis-server`` on a free port, each
test under its own key prefix.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgpack
import pandas as pd
import pytest
import redis

from ml_system.features import FeatureView, Field
from ml_system.features.definitions import DeltaSource
from ml_system.features.online import FeatureStatus, OnlineStore
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.sqlite import SqliteOnlineStore
from ml_system.features.store import OnlineFeatureReader
from tests.features.test_online_contract import STATS_FIELDS, VIEWS, driver

NOW = pd.Timestamp("2024-03-01 12:00", tz="UTC")
HOUR = 3_600_000_000_000


def test_rows_in_the_first_json_format_still_read(tmp_path: Path, redis_url: str) -> None:
    sqlite = SqliteOnlineStore(str(tmp_path / "old.db"))
    sqlite.write_batch("stats", [("1", 1, 1, [0.0])], fields=["x"])
    sqlite._writer().execute("UPDATE fv_stats SET payload = '[1.5, 2, \"a\"]'")
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


def _legacy_rows(backend: str, tmp_path: Path, redis_url: str) -> OnlineStore:
    """A store holding rows in the format before layouts: bare MessagePack values, no field names."""
    packed = msgpack.packb([0.25, 7, "x"])
    if backend == "sqlite":
        store: OnlineStore = SqliteOnlineStore(str(tmp_path / "legacy.db"))
        store.write_batch("stats", [("1", NOW.value, 0, [0.0, 0, ""])], fields=STATS_FIELDS)
        store._writer().execute("UPDATE fv_stats SET payload = ?", (packed,))  # type: ignore[attr-defined]
        return store
    prefix = f"t{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(redis_url).set(f"{prefix}:stats:1", b"%020d%020d" % (NOW.value, 0) + packed)
    return RedisOnlineStore(redis_url, prefix=prefix)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_rows_from_before_layouts_are_read_by_the_names_recorded_for_them(
    backend: str, tmp_path: Path, redis_url: str
) -> None:
    """Unlabelled rows are in the registered order until the schema first changes, which records that order."""
    store = _legacy_rows(backend, tmp_path, redis_url)
    same = OnlineFeatureReader(store, VIEWS, ["stats:rate", "stats:trips", "stats:label"])
    assert same.read([{"driver_id": 1}], now=NOW.to_pydatetime()).values == {
        "rate": [0.25],
        "trips": [7],
        "label": ["x"],
    }
    store.record_legacy_layout("stats", STATS_FIELDS)  # what FeatureStore.apply does before a reorder
    store.record_legacy_layout("stats", ("ignored", "once", "recorded"))
    reordered = FeatureView(
        "stats", [driver], [Field("label", "string"), Field("rate"), Field("seats")], DeltaSource("s"), ttl=None
    )
    reader = OnlineFeatureReader(store, {"stats": reordered}, ["stats:rate", "stats:label", "stats:seats"])
    out = reader.read([{"driver_id": 1}])
    assert out.values == {"rate": [0.25], "label": ["x"], "seats": [None]}
    assert out.statuses["seats"] == [FeatureStatus.NOT_FOUND]
    store.close()


def test_one_round_trip_per_view(tmp_path: Path, redis_url: str) -> None:
    """Observed on the servers' side: Redis command stats, SQLite's statement trace.

    Every request also reads the online snapshot pointer once (``active_snapshot``), so
    that all of its views answer from the same snapshot.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisOnlineStore(redis_url, prefix=prefix)
    store.write_batch("stats", [(str(i), NOW.value, 0, [1.0, 1, "a"]) for i in range(100)], fields=STATS_FIELDS)
    store.write_batch("city", [(f"{i}|nyc", 0, 0, [1.0]) for i in range(100)], fields=["city_rate"])
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
    other.write_batch(
        "stats", [(str(i), NOW.value, 0, [2.0, 2, "b"]) for i in range(100)], snapshot="s2", fields=STATS_FIELDS
    )
    other.write_batch("city", [(f"{i}|nyc", 0, 0, [2.0]) for i in range(100)], snapshot="s2", fields=["city_rate"])
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
    sqlite.write_batch("stats", [(str(i), NOW.value, 0, [1.0, 1, "a"]) for i in range(100)], fields=STATS_FIELDS)
    sqlite.write_batch("city", [(f"{i}|nyc", 0, 0, [1.0]) for i in range(100)], fields=["city_rate"])
    statements: list[str] = []
    sqlite._reader().set_trace_callback(statements.append)
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
    store.write_batch("city", [("1|nyc", 0, 0, [1.5])], fields=["city_rate"])
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
