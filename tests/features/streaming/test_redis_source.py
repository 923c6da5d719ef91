"""Redis Streams source against a private redis-server: the consumer-group contract ingestion relies on."""

from __future__ import annotations

import pytest

from ml_system.config_streaming import StreamingConfig
from ml_system.errors import ConfigError
from ml_system.features.streaming.redis_streams import RedisStreamSource
from ml_system.features.streaming.sources import BrokerUnavailableError, open_stream_source
from tests.features.streaming.conftest import RedisServer


def _source(server: RedisServer, **extra: object) -> RedisStreamSource:
    config = StreamingConfig(broker_url=server.url, stream="events", group="g", **extra)
    source = open_stream_source(config)
    assert isinstance(source, RedisStreamSource)
    source.ensure_group()
    return source


def test_the_backend_table_picks_redis_streams_and_refuses_unknown_types(private_redis: RedisServer) -> None:
    assert isinstance(_source(private_redis), RedisStreamSource)
    with pytest.raises(ConfigError, match="stream source type 'nats'"):
        open_stream_source(StreamingConfig(type="nats", broker_url=private_redis.url))


def test_each_entry_goes_to_one_consumer_and_acked_entries_never_come_back(private_redis: RedisServer) -> None:
    source = _source(private_redis)
    ids = source.publish([{"event_id": str(i), "x": i} for i in range(10)])
    first = source.read("a", 6, 10)
    second = source.read("b", 6, 10)
    assert [m.fields["event_id"] for m in first + second] == [str(i) for i in range(10)]
    assert [m.id for m in first + second] == ids
    assert source.backlog() == {"pending": 10, "lag": 0}
    assert source.ack([m.id for m in first + second]) == 10
    assert source.read("a", 10, 10) == []
    assert source.claim_pending("c", 0, 100) == []
    assert source.backlog()["pending"] == 0


def test_entries_of_a_dead_consumer_are_claimed_by_another_with_their_delivery_count(
    private_redis: RedisServer,
) -> None:
    source = _source(private_redis)
    source.publish([{"event_id": str(i)} for i in range(5)])
    held = source.read("dead", 5, 10)  # never acked: its consumer died
    assert source.claim_pending("alive", 60_000, 100) == []  # not idle long enough yet
    claimed = source.claim_pending("alive", 0, 100)
    assert [m.id for m in claimed] == [m.id for m in held]
    assert {m.deliveries for m in claimed} == {2}
    source.ack([m.id for m in claimed])
    assert source.backlog()["pending"] == 0


def test_a_dead_lettered_entry_keeps_its_fields_and_reason_and_is_acked(private_redis: RedisServer) -> None:
    source = _source(private_redis)
    source.publish([{"event_id": "e1", "amount": "lots"}])
    (message,) = source.read("a", 1, 10)
    source.dead_letter([(message, "malformed: field 'amount': 'lots' is not float64")], "a")
    (parked,) = source.dead_letters()
    assert parked["amount"] == "lots" and parked["_source_id"] == message.id and parked["_consumer"] == "a"
    assert parked["_reason"].startswith("malformed: field 'amount'")
    assert source.backlog()["pending"] == 0


def test_a_broker_that_is_gone_raises_broker_unavailable(private_redis: RedisServer) -> None:
    source = _source(private_redis, request_timeout_s=0.5)
    private_redis.stop()
    with pytest.raises(BrokerUnavailableError, match="reading failed"):
        source.read("a", 1, 10)
    private_redis.start()  # appendonly: the group survives the restart
    source.publish([{"event_id": "after"}])
    assert [m.fields["event_id"] for m in source.read("a", 1, 10)] == ["after"]


def test_the_streaming_section_is_checked_when_the_config_loads(tmp_path: object) -> None:
    from ml_system.config import load_config

    config = load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_STREAMING__STREAM": "clicks"})
    assert config.streaming.dead_letter_stream == "clicks:dead-letter"
    assert config.streaming.state_url == config.streaming.broker_url
    with pytest.raises(ConfigError, match=r"streaming\.consumers"):
        load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_STREAMING__CONSUMERS": "0"})
    with pytest.raises(ConfigError, match=r"streaming\.batch_sizes"):
        load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_STREAMING__BATCH_SIZES": "5"})
