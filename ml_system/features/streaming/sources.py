"""Stream sources: one small interface over the brokers, the backend picked by ``streaming.type``.

What ingestion needs of a broker is four things: read a batch for a consumer of a group, ack
what was written, take over what a dead consumer was handed (so nothing waits for it), and park
refused events with their reason. Redis Streams has each as one command (XREADGROUP, XACK,
XAUTOCLAIM, XADD); Kafka gets the third from its group rebalancing. The table holds import paths,
as the online stores' does, so the embedded default never imports a Kafka client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ml_system.config_streaming import StreamingConfig
from ml_system.errors import StoreUnavailableError
from ml_system.features.backends import backend_class

STREAM_SOURCE_CLASS_FOR_TYPE: dict[str, str] = {
    "redis": "ml_system.features.streaming.redis_streams.RedisStreamSource",
    "kafka": "ml_system.features.streaming.kafka.KafkaStreamSource",
}


class StreamMessage(NamedTuple):
    """One delivered entry: the broker's id for it (what ``ack`` takes), its fields, and how often it was delivered."""

    id: str
    fields: dict[str, str]
    deliveries: int = 1


class BrokerUnavailableError(StoreUnavailableError):
    """The broker (or the window state's Redis) did not answer in time or refused the connection: retry with backoff."""


class StreamSource(ABC):
    """A consumer-group view of one stream. Every method raises ``BrokerUnavailableError`` when the broker is away."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: StreamingConfig) -> StreamSource: ...

    @abstractmethod
    def ensure_group(self) -> None:
        """Create the stream and the consumer group if missing (new groups start at the stream's beginning)."""

    @abstractmethod
    def read(self, consumer: str, count: int, block_ms: int) -> list[StreamMessage]:
        """Up to ``count`` entries never delivered to the group, waiting up to ``block_ms`` for the first."""

    @abstractmethod
    def ack(self, ids: Sequence[str]) -> int:
        """Mark entries done: they are never delivered again."""

    @abstractmethod
    def claim_pending(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamMessage]:
        """Take over entries delivered to any consumer more than ``min_idle_ms`` ago and never acked."""

    @abstractmethod
    def dead_letter(self, items: Sequence[tuple[StreamMessage, str]], consumer: str) -> None:
        """Park refused entries on the dead-letter stream with their reason (then ack them)."""

    @abstractmethod
    def publish(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """Append events (producers, tests, benchmarks); returns their broker ids."""

    @abstractmethod
    def dead_letters(self, count: int = 1000) -> list[dict[str, str]]:
        """The oldest parked entries with their reason, for operators and tests."""

    @abstractmethod
    def backlog(self) -> dict[str, int]:
        """``pending`` (delivered, not acked) and ``lag`` (not delivered yet) of the group, where the broker says."""

    def close(self) -> None:  # noqa: B027 - optional for sources without connections
        """Release connections."""


def open_stream_source(config: StreamingConfig) -> StreamSource:
    """The source ``config.type`` names (a table key or a class path)."""
    return backend_class("stream source", config.type, STREAM_SOURCE_CLASS_FOR_TYPE, StreamSource).from_config(config)
