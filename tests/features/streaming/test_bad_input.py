"""Bad events and a broker that goes away: parked with a reason or retried, never a crash, never a silent drop."""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from pathlib import Path

import pandas as pd

from ml_system.features import FeatureStore
from ml_system.features.streaming.group import open_ingestor
from ml_system.features.streaming.sources import open_stream_source
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
from tests.features.streaming.test_consumer_group import exact_mismatches, wait_until


def _setup(tmp_path: Path, server: RedisServer, lateness: timedelta, **extra: str):
    config = stream_config(tmp_path / "mlsys", server.url, **extra)
    store = FeatureStore(config)
    views = payment_views(lateness)
    store.apply([USER, MERCHANT, *views])
    return config, store, views, open_stream_source(config.streaming), open_ingestor(config, "c")


def test_malformed_events_are_parked_with_a_reason_naming_the_field(tmp_path: Path, private_redis: RedisServer) -> None:
    _, _, _, source, ingestor = _setup(tmp_path, private_redis, timedelta(minutes=30))
    good = as_messages(payment_events(20))
    now = pd.Timestamp.now(tz="UTC").floor("s").isoformat()
    base = {"event_timestamp": now, "user_id": "u1", "merchant_id": "2", "amount": "1.5", "flagged": "false"}
    bad = {
        "no id": ({**base, "event_id": ""}, "field 'event_id' is missing or empty"),
        "naive": ({**base, "event_id": "b1", "event_timestamp": "2026-01-01T00:00:00"}, "has no UTC offset"),
        "not a time": ({**base, "event_id": "b2", "event_timestamp": "yesterday"}, "is not an ISO 8601 time"),
        "text amount": ({**base, "event_id": "b3", "amount": "lots"}, "field 'amount': 'lots' is not float64"),
        "no key": ({k: v for k, v in base.items() if k != "user_id"} | {"event_id": "b4"}, "join key 'user_id'"),
        "bad int key": ({**base, "event_id": "b5", "merchant_id": "abc"}, "join key 'merchant_id'"),
        "no field": (
            {k: v for k, v in base.items() if k != "flagged"} | {"event_id": "b6"},
            "field 'flagged' is missing",
        ),
        "future": ({**base, "event_id": "b7", "event_timestamp": "2099-01-01T00:00:00+00:00"}, "future:"),
        "NUL in id": ({**base, "event_id": "b8\0x"}, "field 'event_id' holds a NUL character"),
    }
    source.publish([*good[:10], *(event for event, _ in bad.values()), *good[10:]])
    drain(ingestor)
    parked = source.dead_letters()
    assert len(parked) == len(bad)
    for (event, reason), entry in zip(bad.values(), parked, strict=True):
        assert reason in entry["_reason"], (reason, entry["_reason"])
        assert entry.get("event_id", "") == event.get("event_id", "")
    assert ingestor.status.events == 20 and ingestor.status.dead_lettered == len(bad)
    assert source.backlog() == {"pending": 0, "lag": 0}


def test_events_later_than_the_allowed_lateness_are_parked_and_the_rest_counted(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    _, store, views, source, ingestor = _setup(tmp_path, private_redis, timedelta(minutes=10))
    now = pd.Timestamp.now(tz="UTC").floor("s")
    events = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "event_timestamp": [now, now - pd.Timedelta(minutes=30), now - pd.Timedelta(minutes=5), now],
            "user_id": ["u1"] * 4,
            "merchant_id": [1, 1, 1, 2],
            "amount": [10.0, 1000.0, 5.0, 7.0],
            "flagged": [False] * 4,
        }
    )
    source.publish(as_messages(events))
    drain(ingestor)
    (parked,) = source.dead_letters()
    assert parked["event_id"] == "b" and parked["_reason"].startswith("late:")
    assert "allowed_lateness" in parked["_reason"]
    accepted = events[events["event_id"] != "b"]
    assert exact_mismatches(store, views, accepted) == []
    row = store.online.read("user_payments", ["u1"])[0]
    assert row is not None and row.values[:2] == [3, 22.0]  # count and sum over the last hour, without 'b'
    assert ingestor.status.late == 1 and source.backlog()["pending"] == 0


def test_a_broker_that_stalls_or_dies_is_retried_reported_and_loses_nothing(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    _, store, views, source, ingestor = _setup(
        tmp_path, private_redis, timedelta(hours=24), request_timeout_s="0.3", retry_max_s="0.5"
    )
    events = payment_events(600, seed=5)
    messages = as_messages(events)
    loop = threading.Thread(target=ingestor.run, daemon=True)
    loop.start()
    try:
        source.publish(messages[:200])
        wait_until("the first events ingested", lambda: ingestor.status.events >= 200)

        assert private_redis.proc is not None
        private_redis.proc.send_signal(signal.SIGSTOP)  # stalled: no answer, no error
        wait_until("the stall reported", lambda: ingestor.status.state == "retrying")
        assert "BrokerUnavailableError" in ingestor.status.last_error
        private_redis.proc.send_signal(signal.SIGCONT)
        source.publish(messages[200:400])
        wait_until("recovery from the stall", lambda: ingestor.status.events >= 400)
        assert ingestor.status.state == "running"

        private_redis.proc.kill()  # gone: kill -9 (appendfsync always keeps what it acknowledged)
        private_redis.proc.wait()
        retries = ingestor.status.retries
        wait_until("the loss reported", lambda: ingestor.status.retries > retries)
        assert ingestor.status.state == "retrying" and loop.is_alive()
        private_redis.start()
        source.publish(messages[400:])
        wait_until("everything ingested", lambda: ingestor.status.events >= 600)
    finally:
        ingestor.stop()
        loop.join(10)
    assert ingestor.status.state == "stopped"
    assert exact_mismatches(store, views, events) == []
    assert source.dead_letters() == [] and source.backlog() == {"pending": 0, "lag": 0}
