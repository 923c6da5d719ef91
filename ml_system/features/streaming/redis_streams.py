"""Redis Streams as a stream source: consumer groups with XREADGROUP, XACK and XAUTOCLAIM.

Why Redis Streams first: the platform already runs Redis for the online store, and a stream's
consumer group gives what at-least-once ingestion needs without another service: each entry is
delivered to one consumer, stays pending until acked, and an entry whose consumer died is
taken over with XAUTOCLAIM once it has been idle for ``claim_idle_ms``. A refused entry is parked
on the dead-letter stream and acked in one MULTI, so it is never both parked and redelivered.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import redis
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.retry import Retry

from ml_system.config_streaming import StreamingConfig
from ml_system.features.streaming.sources import BrokerUnavailableError, StreamMessage, StreamSource

DEAD_LETTER_FIELDS = ("_reason", "_source_id", "_consumer", "_stream")
"""Fields a parked entry carries besides the event's own."""


@contextmanager
def unavailable_as(what: str) -> Iterator[None]:
    """Redis errors that mean "not now" (gone, stalled, loading, busy in a script) as ``BrokerUnavailableError``."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailableError(f"{what} failed: {exc}") from exc
    except redis.ResponseError as exc:
        if str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN")):
            raise BrokerUnavailableError(f"{what} failed: {exc}") from exc
        raise


class RedisStreamSource(StreamSource):
    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        dead_letter_stream: str,
        *,
        request_timeout_s: float = 5.0,
        block_ms: int = 100,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.dead_letter_stream = dead_letter_stream
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=request_timeout_s + block_ms / 1000,
            socket_connect_timeout=request_timeout_s,
            retry=Retry(NoBackoff(), 0),  # the consumer loop owns retries and reports them
        )
        # XREADGROUP's reply as it comes (nested lists): redis-py's parsing of it into dicts cost
        # about a tenth of a consumer's CPU per event; ``read`` pairs the fields up itself
        self._client.set_response_callback("XREADGROUP", _unparsed)
        self._claim_cursor = "0-0"

    @classmethod
    def from_config(cls, config: StreamingConfig) -> RedisStreamSource:
        return cls(
            config.broker_url,
            config.stream,
            config.group,
            config.dead_letter_stream,
            request_timeout_s=config.request_timeout_s,
            block_ms=config.block_ms,
        )

    def _calling(self, what: str) -> AbstractContextManager[None]:
        return unavailable_as(f"Redis stream '{self.stream}': {what}")

    def ensure_group(self) -> None:
        with self._calling("creating the consumer group"):
            try:
                self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, consumer: str, count: int, block_ms: int) -> list[StreamMessage]:
        with self._calling("reading"):
            reply = self._client.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        if not reply:
            return []
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]  # RESP3: a map by stream
        return [
            StreamMessage(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {})
            for entry_id, flat in entries
        ]

    def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._calling("acknowledging"):
            return int(self._client.xack(self.stream, self.group, *ids))

    def claim_pending(self, consumer: str, min_idle_ms: int, count: int) -> list[StreamMessage]:
        """One XAUTOCLAIM step from where the last one stopped; the delivery counts come from XPENDING."""
        with self._calling("claiming pending entries"):
            cursor, entries, deleted = self._client.xautoclaim(
                self.stream, self.group, consumer, min_idle_ms, start_id=self._claim_cursor, count=count
            )[:3]
            self._claim_cursor = cursor
            if deleted:  # trimmed away while pending: nothing left to process
                self._client.xack(self.stream, self.group, *deleted)
            entries = [(i, f) for i, f in entries if f is not None]
            if not entries:
                return []
            pending = self._client.xpending_range(
                self.stream,
                self.group,
                min=entries[0][0],
                max=entries[-1][0],
                count=len(entries),
                consumername=consumer,
            )
        times = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return [StreamMessage(i, f, times.get(i, 2)) for i, f in entries]

    def dead_letter(self, items: Sequence[tuple[StreamMessage, str]], consumer: str) -> None:
        if not items:
            return
        with self._calling("writing the dead letter"):
            pipe = self._client.pipeline(transaction=True)
            for message, reason in items:
                parked = {
                    **message.fields,
                    "_reason": reason,
                    "_source_id": message.id,
                    "_consumer": consumer,
                    "_stream": self.stream,
                }
                pipe.xadd(self.dead_letter_stream, parked)
            pipe.xack(self.stream, self.group, *[m.id for m, _ in items])
            pipe.execute()

    def publish(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """XADD each event, all packed into one write on one connection (redis-py's pipeline cost
        more per event than Redis did); a reply that is an error fails the call."""
        if not events:
            return []
        head = [b"XADD", self.stream.encode(), b"*"]
        names: dict[Any, bytes] = {}
        packed = []
        for event in events:
            command = head.copy()
            for name, value in event.items():
                raw = names.get(name)
                if raw is None:
                    raw = names[name] = str(name).encode()
                command.append(raw)
                command.append(value.encode() if type(value) is str else _raw(value))
            packed.append(pack_command(tuple(command)))
        pool = self._client.connection_pool
        with self._calling("publishing"):
            connection = pool.get_connection()
            try:
                connection.send_packed_command([b"".join(packed)])
                replies = [connection.read_response() for _ in events]
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)
        failed = [r for r in replies if isinstance(r, redis.ResponseError)]
        if failed:
            raise failed[0]
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]

    def dead_letters(self, count: int = 1000) -> list[dict[str, str]]:
        with self._calling("reading the dead letter"):
            return [fields for _, fields in self._client.xrange(self.dead_letter_stream, count=count)]

    def backlog(self) -> dict[str, int]:
        with self._calling("reading the group's backlog"):
            try:
                groups = self._client.xinfo_groups(self.stream)
            except redis.ResponseError:  # no stream yet
                return {"pending": 0, "lag": 0}
        for group in groups:
            if group["name"] == self.group:
                return {"pending": int(group.get("pending") or 0), "lag": int(group.get("lag") or 0)}
        return {"pending": 0, "lag": 0}

    def close(self) -> None:
        self._client.close()


def _unparsed(response: Any, **options: Any) -> Any:
    return response


def _raw(value: Any) -> bytes:
    """Field values as Redis stores them: text (bytes and numbers as written, None as empty)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else str(value)).encode()
