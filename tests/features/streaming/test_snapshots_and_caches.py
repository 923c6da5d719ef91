"""The stream and the online data rollout: loads in progress receive it; replica caches bound its staleness."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ml_system.features import FeatureStore, snapshots
from ml_system.features.streaming.group import open_ingestor
from ml_system.features.streaming.sources import open_stream_source
from ml_system.serving.cache import TTLCache
from ml_system.serving.feature_cache import CachingOnlineStore
from tests.features.streaming.conftest import (
    MERCHANT,
    USER,
    RedisServer,
    as_messages,
    drain,
    payment_events,
    payment_views,
    stream_config,
)


def test_a_snapshot_being_loaded_receives_the_stream_and_serves_it_once_active(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    config = stream_config(tmp_path / "mlsys", private_redis.url)
    store = FeatureStore(config)
    store.apply([USER, MERCHANT, *payment_views()])
    loading = snapshots.new_snapshot_id()
    snapshots.record(store.online, loading, pd.Timestamp.now(tz="UTC").isoformat(), "loading")
    events = payment_events(120)
    open_stream_source(config.streaming).publish(as_messages(events))
    drain(open_ingestor(config, "c"))

    users = sorted(events["user_id"].unique())
    base = store.online.read("user_payments", users)
    assert all(row is not None for row in base)
    assert store.online.read("user_payments", users, loading) == base  # the load got every streamed row
    snapshots.record(store.online, loading, pd.Timestamp.now(tz="UTC").isoformat(), "ready", expect=("loading",))
    store.activate_snapshot(loading)
    served = store.get_online_features(["user_payments:amount_count_1h"], [{"user_id": u} for u in users])
    assert served.values["amount_count_1h"] == [row.values[0] for row in base]  # type: ignore[union-attr]


def test_a_replica_cache_serves_a_streamed_row_at_most_its_ttl_late(tmp_path: Path, private_redis: RedisServer) -> None:
    config = stream_config(tmp_path / "mlsys", private_redis.url)
    store = FeatureStore(config)
    store.apply([USER, MERCHANT, *payment_views()])
    source = open_stream_source(config.streaming)
    ingestor = open_ingestor(config, "c")
    now = [0.0]
    cached = CachingOnlineStore(store.online, TTLCache(1.0, 1000, clock=lambda: now[0]), ["user_payments"])
    events = payment_events(60)
    user = events["user_id"].iloc[-1]

    def seen() -> int:
        """The event time of the user's row that the replica serves."""
        cached.refresh()
        (row,) = cached.read_views([("user_payments", [user])])[0]
        assert row is not None
        return row.event_ts

    source.publish(as_messages(events.iloc[:30]))
    drain(ingestor)
    before = seen()
    version = cached.version
    source.publish(as_messages(events.iloc[30:]))
    drain(ingestor)
    after = store.online.read("user_payments", [user])[0]
    assert after is not None and after.event_ts > before
    now[0] = 0.9
    assert seen() == before and cached.version == version  # a streamed write does not move the data version
    now[0] = 1.01
    assert seen() == after.event_ts  # ... so the cache's TTL is the bound on its staleness
