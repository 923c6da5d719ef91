"""Kafka as a stream source (``confluent-kafka``, librdkafka underneath).

The interface maps onto a consumer group: ``read`` polls a batch, ``ack`` commits each partition's
offset past the batch synchronously (after the rows are written, as for Redis Streams), and
``dead_letter`` produces the refused entries to ``<topic>.dead-letter`` and commits them.
``claim_pending`` has nothing to do: when a consumer dies, the group coordinator hands its
partitions to the others after ``session.timeout.ms``, and they resume from the last committed
offset, so the dead consumer's uncommitted entries are delivered again (and counted once, by the
window state's event ids). Events travel as one JSON object per message, keyed by event id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ml_system.config_streaming import StreamingConfig
from ml_system.features.streaming.sources import BrokerUnavailableError, StreamMessage, StreamSource

DEFAULT_PARTITIONS = 4


class KafkaStreamSource(StreamSource):
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        dead_letter_topic: str,
        settings: Mapping[str, str] | None = None,
        *,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.topic = topic
        self.group = group
        self.dead_letter_topic = dead_letter_topic
        self.timeout_s = request_timeout_s
        self.base: dict[str, Any] = {"bootstrap.servers": bootstrap, **(settings or {})}
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._consumer_name = ""

    @classmethod
    def from_config(cls, config: StreamingConfig) -> KafkaStreamSource:
        return cls(
            config.broker_url,
            config.stream,
            config.group,
            config.dead_letter_stream,
            config.kafka,
            request_timeout_s=config.request_timeout_s,
        )

    def _fail(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        return BrokerUnavailableError(f"Kafka topic '{self.topic}': {what} failed: {exc}")

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({**self.base, "enable.idempotence": True})
        return self._producer

    def _consumer_for(self, name: str) -> Consumer:
        if self._consumer is None or self._consumer_name != name:
            if self._consumer is not None:
                self._consumer.close()
            self._consumer = Consumer(
                {
                    **self.base,
                    "group.id": self.group,
                    "client.id": name,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
            self._consumer.subscribe([self.topic])
            self._consumer_name = name
        return self._consumer

    def ensure_group(self) -> None:
        """Create the topic and its dead-letter topic if missing; the group forms when consumers join.

        A cluster that does not take CreateTopics (librdkafka's mock, brokers that only auto-create)
        is asked for the topics' metadata instead, which auto-creates them where that is allowed.
        """
        admin = AdminClient(self.base)
        topics = (self.topic, self.dead_letter_topic)
        try:
            known = admin.list_topics(timeout=self.timeout_s).topics
        except KafkaException as exc:
            raise self._fail("reading the cluster's metadata", exc) from exc
        missing = [t for t in topics if t not in known]
        if not missing:
            return
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=DEFAULT_PARTITIONS) for t in missing], operation_timeout=self.timeout_s
        )
        for future in futures.values():
            try:
                future.result(timeout=self.timeout_s)
            except Exception:  # noqa: BLE001 - checked below, by what the metadata says
                pass
        for topic in missing:
            try:
                meta = self.producer.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise self._fail(f"creating topic '{topic}'", exc) from exc
            if meta is None or meta.error is not None or not meta.partitions:
                raise self._fail(f"creating topic '{topic}'", RuntimeError(meta.error if meta else "not created"))

    def read(self, consumer: str, count: int, block_ms: int) -> list[StreamMessage]:
        try:
            messages = self._consumer_for(consumer).consume(num_messages=count, timeout=block_ms / 1000)
        except KafkaException as exc:
            raise self._fail("reading", exc) from exc
        out = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.retriable() or error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                    raise self._fail("reading", KafkaException(error))
            value = m.value()
            text = value.decode() if isinstance(value, bytes) else ""
            out.append(StreamMessage(f"{m.topic()}:{m.partition()}:{m.offset()}", {"json": text}))
        return out

    def ack(self, ids: Sequence[str]) -> int:
        """Commit, per partition, the offset after the highest acked entry (Kafka's offsets are cumulative)."""
        if not ids:
            return 0
        upto: dict[tuple[str, int], int] = {}
        for entry in ids:
            topic, partition, offset = entry.rsplit(":", 2)
            key = (topic, int(partition))
            upto[key] = max(upto.get(key, -1), int(offset))
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in upto.items()]
        if self._consumer is None:
            raise BrokerUnavailableError(f"Kafka topic '{self.topic}': no consumer has read the entries being acked")
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise self._fail("committing offsets", exc) from exc
        return len(ids)

    def claim_pending(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamMessage]:
        return []  # the group coordinator reassigns a dead consumer's partitions; see the module docstring

    def dead_letter(self, items: Sequence[tuple[StreamMessage, str]], consumer: str) -> None:
        if not items:
            return
        for message, reason in items:
            fields = _fields(message.fields)
            parked = {
                **fields,
                "_reason": reason,
                "_source_id": message.id,
                "_consumer": consumer,
                "_stream": self.topic,
            }
            self.producer.produce(self.dead_letter_topic, json.dumps(parked).encode(), key=message.id.encode())
        if self.producer.flush(self.timeout_s) > 0:
            raise BrokerUnavailableError(f"Kafka topic '{self.dead_letter_topic}': dead letters not delivered in time")
        self.ack([m.id for m, _ in items])

    def publish(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        delivered: list[str] = []
        failed: list[str] = []

        def done(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                delivered.append(f"{msg.topic()}:{msg.partition()}:{msg.offset()}")

        for event in events:
            key = str(event.get("event_id", "")).encode() or None
            self.producer.produce(self.topic, json.dumps(dict(event), default=str).encode(), key=key, on_delivery=done)
            self.producer.poll(0)
        left = self.producer.flush(self.timeout_s)
        if failed or left:
            raise BrokerUnavailableError(f"Kafka topic '{self.topic}': {left} events undelivered, {failed[:1]}")
        return delivered

    def dead_letters(self, count: int = 1000) -> list[dict[str, str]]:
        """Read the dead-letter topic from its start, partitions assigned directly (no group to join)."""
        reader = Consumer(
            {**self.base, "group.id": f"mlsys-dead-letters-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        try:
            meta = reader.list_topics(self.dead_letter_topic, timeout=self.timeout_s).topics[self.dead_letter_topic]
            ends = {}
            for p in meta.partitions:
                low, high = reader.get_watermark_offsets(
                    TopicPartition(self.dead_letter_topic, p), timeout=self.timeout_s
                )
                if high > low:
                    ends[p] = high
            reader.assign([TopicPartition(self.dead_letter_topic, p, OFFSET_BEGINNING) for p in ends])
            out: list[dict[str, str]] = []
            deadline = time.monotonic() + self.timeout_s
            while ends and len(out) < count and time.monotonic() < deadline:
                for m in reader.consume(num_messages=count - len(out), timeout=0.5):
                    if m.error() is None:
                        out.append(json.loads(m.value()))
                        if m.offset() + 1 >= ends.get(m.partition(), 0):
                            ends.pop(m.partition(), None)
            return out
        except KafkaException as exc:
            raise self._fail("reading the dead letter", exc) from exc
        finally:
            reader.close()

    def backlog(self) -> dict[str, int]:
        """``lag``: entries past the group's committed offsets; ``pending`` is not tracked by Kafka (0)."""
        probe = Consumer({**self.base, "group.id": self.group, "enable.auto.commit": False})
        try:
            meta = probe.list_topics(self.topic, timeout=self.timeout_s)
            partitions = [TopicPartition(self.topic, p) for p in meta.topics[self.topic].partitions]
            committed = probe.committed(partitions, timeout=self.timeout_s)
            lag = 0
            for tp in committed:
                low, high = probe.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=self.timeout_s
                )
                lag += high - (tp.offset if tp.offset >= 0 else low)
            return {"pending": 0, "lag": lag}
        except KafkaException as exc:
            raise self._fail("reading the group's lag", exc) from exc
        finally:
            probe.close()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(self.timeout_s)


def _fields(fields: dict[str, str]) -> dict[str, Any]:
    if set(fields) == {"json"}:
        try:
            document = json.loads(fields["json"])
            if isinstance(document, dict):
                return document
        except json.JSONDecodeError:
            pass
    return dict(fields)
