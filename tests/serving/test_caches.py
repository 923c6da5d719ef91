"""Caches keyed on model and data version, over a real SQLite online store."""

from __future__ import annotations

import uuid
from pathlib import Path

import redis

from ml_system.config import SqliteOnlineStoreConfig
from ml_system.features.online import open_online_store
from ml_system.features.online.base import ACTIVE_SNAPSHOT
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.serving.cache import MISSING, TTLCache
from ml_system.serving.feature_cache import CachingOnlineStore, data_version


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_expiry_eviction_and_hit_rate() -> None:
    clock = Clock()
    cache = TTLCache(ttl_s=1.0, max_entries=2, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") == 1
    clock.now = 1.5
    assert cache.get("a") is MISSING
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert len(cache) == 2 and cache.get("a") is MISSING and cache.get("c") == 3
    assert cache.hits == 2 and cache.misses == 2 and cache.hit_rate() == 0.5
    cache.resize(0, 10)
    cache.put("d", 4)
    assert not cache.enabled and len(cache) == 0


def test_feature_cache_never_serves_across_a_new_data_version(tmp_path: Path) -> None:
    store = open_online_store(SqliteOnlineStoreConfig(path=str(tmp_path / "online.db")))
    store.write_batch("weather", [("EWR", 10, 10, [1.0])], fields=["temp"])
    store.set_meta("materialized_until:weather", "100")
    cached = CachingOnlineStore(store, TTLCache(60, 100), ["weather"])
    v1 = cached.refresh()
    assert v1 == data_version(store, ["weather"]) == "base|weather=100"
    assert cached.read("weather", ["EWR", "JFK"])[0].values == [1.0]  # type: ignore[union-attr]
    store.write_batch("weather", [("EWR", 20, 20, [2.0])], fields=["temp"])
    # same data version: answered from the cache (the TTL bounds this lag for pushed rows)
    assert cached.read("weather", ["EWR"])[0].values == [1.0]  # type: ignore[union-attr]
    assert cached.cache.hits == 1
    store.set_meta("materialized_until:weather", "200")
    assert cached.refresh() != v1
    assert cached.read("weather", ["EWR"])[0].values == [2.0]  # type: ignore[union-attr]
    # a data rollout switches the snapshot pointer: new version, reads go to the snapshot's rows
    store.write_batch("weather", [("EWR", 30, 30, [3.0])], snapshot="s42", fields=["temp"])
    store.set_meta_many({ACTIVE_SNAPSHOT: "s42", "materialized_until:weather@s42": "300"})
    assert cached.refresh() == "s42|weather=300"
    assert cached.read_views([("weather", ["EWR"])])[0][0].values == [3.0]  # type: ignore[union-attr]


def test_disabled_cache_reads_through(tmp_path: Path) -> None:
    store = open_online_store(SqliteOnlineStoreConfig(path=str(tmp_path / "online.db")))
    store.write_batch("weather", [("EWR", 10, 10, [1.0])], fields=["temp"])
    cached = CachingOnlineStore(store, TTLCache(0, 0), ["weather"])
    assert cached.refresh() == ""
    store.write_batch("weather", [("EWR", 20, 20, [2.0])], fields=["temp"])
    assert cached.read("weather", ["EWR"])[0].values == [2.0]  # type: ignore[union-attr]
    assert cached.cache.hits == 0


def test_prediction_cache_alone_still_gets_the_data_version(tmp_path: Path) -> None:
    """With the feature cache off, a prediction cache must still key on the data version."""
    store = open_online_store(SqliteOnlineStoreConfig(path=str(tmp_path / "online.db")))
    store.set_meta("materialized_until:weather", "100")
    cached = CachingOnlineStore(store, TTLCache(0, 0), ["weather"])
    assert cached.refresh() == ""
    assert cached.refresh(needed=True) == "base|weather=100"
    store.set_meta("materialized_until:weather", "200")
    assert cached.refresh(needed=True) == "base|weather=200"


def test_cached_reads_cost_two_meta_reads_and_one_row_read_per_request(redis_url: str) -> None:
    """Counted by Redis itself: the data version is one HGET + one HMGET, every view's misses one MGET."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisOnlineStore(redis_url, prefix=prefix)
    store.write_batch("weather", [("EWR", 10, 10, [1.0]), ("JFK", 10, 10, [2.0])], fields=["temp"])
    store.write_batch("planes", [("N1", 10, 10, [1999])], fields=["plane_year"])
    views = ["weather", "planes", "carrier_stats", "origin_stats", "route_stats"]
    cached = CachingOnlineStore(store, TTLCache(60, 100), views)
    admin = redis.Redis.from_url(redis_url)
    admin.config_resetstat()
    cached.refresh()
    rows = cached.read_views([("weather", ["EWR", "JFK", "LGA"]), ("planes", ["N1"])])
    assert [[r and r.values for r in view] for view in rows] == [[[1.0], [2.0], None], [[1999]]]
    calls = {name: s["calls"] for name, s in admin.info("commandstats").items()}
    assert calls.get("cmdstat_hget") == 1 and calls.get("cmdstat_hmget") == 1
    assert calls.get("cmdstat_mget") == 1 and "cmdstat_multi" not in calls  # the refreshed snapshot, no re-read
    admin.config_resetstat()
    cached.read_views([("weather", ["EWR", "LGA"]), ("planes", ["N1"])])  # EWR and N1 hit; LGA was cached as absent
    assert "cmdstat_mget" not in admin.info("commandstats")
    store.close()
    admin.close()


def test_rows_come_from_the_snapshot_the_version_names(tmp_path: Path) -> None:
    """A switch between refresh() and the read must not file new rows under the old version."""
    store = open_online_store(SqliteOnlineStoreConfig(path=str(tmp_path / "online.db")))
    store.write_batch("weather", [("EWR", 10, 10, [1.0])], fields=["temp"])
    store.write_batch("weather", [("EWR", 20, 20, [2.0])], snapshot="s2", fields=["temp"])
    cached = CachingOnlineStore(store, TTLCache(0, 0), ["weather"])  # only a prediction cache keys on the version
    assert cached.refresh(needed=True).startswith("base|")
    store.set_meta(ACTIVE_SNAPSHOT, "s2")
    assert cached.read_views([("weather", ["EWR"])])[0][0].values == [1.0]  # type: ignore[union-attr]
    assert cached.refresh(needed=True).startswith("s2|")
    assert cached.read_views([("weather", ["EWR"])])[0][0].values == [2.0]  # type: ignore[union-attr]
    cached.refresh()  # nothing keys on the version: each read resolves the pointer itself
    store.set_meta(ACTIVE_SNAPSHOT, "")
    assert cached.read_views([("weather", ["EWR"])])[0][0].values == [1.0]  # type: ignore[union-attr]
