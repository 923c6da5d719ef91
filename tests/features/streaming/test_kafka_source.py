"""Kafka through confluent-kafka against librdkafka's built-in mock cluster (real Kafka protocol over TCP).

The mock (``test.mock.num.brokers``) runs inside the first client that asks for it; other clients,
in this process or another, reach it through the broker addresses that client's metadata lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from confluent_kafka import Producer

from ml_system.config_streaming import StreamingConfig
from ml_system.features import FeatureStore
from ml_system.features.streaming.group import open_ingestor
from ml_system.features.streaming.kafka import KafkaStreamSource
from ml_system.features.streaming.sources import open_stream_source
from tests.features.streaming.conftest import (
    MERCHANT,
    USER,
    RedisServer,
    as_messages,
    payment_events,
    payment_views,
    stream_config,
)
from tests.features.streaming.test_consumer_group import exact_mismatches


@pytest.fixture()
def kafka_bootstrap() -> Iterator[str]:
    holder = Producer({"test.mock.num.brokers": 1})
    brokers = holder.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    holder.flush(5)


def _until(what: str, check: object, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"gave up waiting for {what}"


def test_read_ack_and_dead_letter_on_the_mock_cluster(kafka_bootstrap: str) -> None:
    config = StreamingConfig(type="kafka", broker_url=kafka_bootstrap, stream="payments", group="g")
    assert config.dead_letter_stream == "payments.dead-letter"
    source = open_stream_source(config)
    assert isinstance(source, KafkaStreamSource)
    source.ensure_group()
    source.ensure_group()  # a second time is a no-op
    source.publish([{"event_id": f"e{i}", "amount": i} for i in range(20)])
    got: list = []
    _until("20 entries read", lambda: got.extend(source.read("a", 50, 200)) or len(got) >= 20)
    assert sorted(m.fields["json"] for m in got)[0].startswith('{"event_id": "e0"')
    source.dead_letter([(got[0], "malformed: test")], "a")
    source.ack([m.id for m in got[1:]])
    assert source.backlog()["lag"] == 0
    (parked,) = source.dead_letters()
    assert parked["_reason"] == "malformed: test" and parked["_source_id"] == got[0].id
    source.close()


def test_ingestion_from_kafka_counts_each_event_once(
    tmp_path: Path, private_redis: RedisServer, kafka_bootstrap: str
) -> None:
    config = stream_config(
        tmp_path / "mlsys", private_redis.url, type="kafka", broker_url=kafka_bootstrap, state_url=private_redis.url
    )
    store = FeatureStore(config)
    views = payment_views(timedelta(hours=24))
    store.apply([USER, MERCHANT, *views])
    events = payment_events(300, seed=2)
    ingestor = open_ingestor(config, "k0")
    ingestor.source.ensure_group()
    ingestor.source.publish(as_messages(events))
    ingestor.source.publish(as_messages(events.iloc[:50]))  # delivered twice
    _until("every delivery handled", lambda: ingestor.step() >= 0 and ingestor.status.events >= 350)
    assert ingestor.status.duplicates == 50 and ingestor.status.dead_lettered == 0
    assert exact_mismatches(store, views, events) == []
    ingestor.source.close()


def test_a_bounded_backfill_with_ray_data_read_kafka_gives_the_training_values(
    tmp_path: Path, private_redis: RedisServer, kafka_bootstrap: str, ray_cluster: str
) -> None:
    from ml_system.features.streaming.backfill import kafka_events
    from ml_system.features.streaming.offline import build_offline
    from ml_system.features.streaming.windows import offline_rows

    config = stream_config(tmp_path / "mlsys", private_redis.url, type="kafka", broker_url=kafka_bootstrap)
    store = FeatureStore(config)
    views = payment_views()
    store.apply([USER, MERCHANT, *views])
    events = payment_events(200, seed=4)
    source = open_stream_source(config.streaming)
    source.ensure_group()
    source.publish([{**m, "amount": m["amount"] or None} for m in as_messages(events)])
    source.publish([{"event_id": "junk", "event_timestamp": "not a time", "user_id": "u1"}])  # left out
    backfilled = kafka_events(config.streaming, views[0]).to_pandas()
    assert len(backfilled) == len(events)
    store.offline.write_pandas("payment_events", backfilled)
    build_offline(store.registry, store.offline, ["user_payments"])
    got = store.offline.read_pandas("user_payments").sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    want = offline_rows(views[0], events).sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
