"""Redis online store for production.

Layout: one string key ``{prefix}:{view}:{entity_key}`` per (view, entity)
holding the whole row: the event and created timestamps (nanoseconds, UTC) as
20-digit zero-padded ASCII numbers, then the values as one MessagePack array
(``codec.py``). A batch lookup is one ``MGET`` (measured here 7x faster than
pipelined hashes for 100 rows). The fixed-width digits let the Lua upsert
compare recency as strings, inside Redis and atomically, which keeps parallel
materialization idempotent (Lua numbers are doubles and would round
nanoseconds).

The read path builds keys from a per-view prefix kept across calls and cuts
each reply with slices, because at one row the Python around the round trip
costs as much as the round trip itself. For the same reason reads skip
redis-py's per-command machinery (pool checkout, argument encoding, health
checks): each thread keeps one connection of its own and sends commands it
packed itself, parsed by hiredis, and waits for the reply spinning before it
sleeps (``resp.py``: most of a loopback round trip is the kernel waking the
reader). Writes and admin commands go through redis-py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import redis
from redis.connection import AbstractConnection

from ml_system.errors import StoreError
from ml_system.features.online.base import ACTIVE_SNAPSHOT, BASE, OnlineRow, OnlineStore, check_snapshot_id
from ml_system.features.online.codec import pack_values, unpack_values
from ml_system.features.online.resp import RespLink, pack_command, supports

_UPSERT_IF_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local old = redis.call('GET', key)
  local take = true
  if old then
    -- fixed-width digits compare as strings; Lua numbers would round nanoseconds
    if string.sub(new, 1, 40) < string.sub(old, 1, 40) then take = false end
  end
  if take then redis.call('SET', key, new); written = written + 1 end
end
return written
"""


def encode_row(event_ts: int, created_ts: int, values: list[Any]) -> bytes:
    return b"%020d%020d" % (event_ts, created_ts) + pack_values(values)


def decode_rows(items: list[bytes | None]) -> list[OnlineRow | None]:
    """A reply's rows; one loop with locals bound, since 100 rows make this the read's largest cost.

    Rows in the first format (JSON values) fail MessagePack with extra data,
    and only then does the reply go through the slower decoder.
    """
    try:
        return _decode(items, msgpack.unpackb)
    except (msgpack.ExtraData, ValueError):
        return _decode(items, unpack_values)


def _decode(items: list[bytes | None], unpack: Any) -> list[OnlineRow | None]:
    row = OnlineRow
    return [None if item is None else row(int(item[:20]), int(item[20:40]), unpack(item[40:])) for item in items]


_MULTI = pack_command([b"MULTI"])
_EXEC = pack_command([b"EXEC"])


class _Link:
    """One redis-py connection kept by one thread, for what ``RespLink`` does not speak (TLS)."""

    def __init__(self, client: redis.Redis) -> None:
        self._conn: AbstractConnection = client.connection_pool.make_connection()

    def call(self, packed: bytes, replies: int = 1) -> Any:
        try:
            self._conn.send_packed_command([packed], check_health=False)
            out = [self._conn.read_response(disconnect_on_error=True) for _ in range(replies)]
        except redis.ResponseError:
            self._conn.disconnect()  # replies left unread would answer the next call
            raise
        last = out[-1]
        if isinstance(last, list):
            for item in last:
                if isinstance(item, Exception):
                    raise item
        return last

    def close(self) -> None:
        self._conn.disconnect()


class _PinnedLinks(threading.local):
    """Each thread's own connection for reads: no pool checkout per command."""

    link: RespLink | _Link | None = None


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, prefix: str = "mlsys", read_spin_us: int = 100) -> None:
        self.url = url
        self.prefix = prefix
        self.read_spin_us = read_spin_us
        self._client = redis.Redis.from_url(url)
        self._upsert = self._client.register_script(_UPSERT_IF_NEWER)
        self._view_prefix: dict[tuple[str, str], bytes] = {}
        self._links = _PinnedLinks()
        self._opened: list[RespLink | _Link] = []
        self._lock = threading.Lock()
        self._pointer_guess = BASE
        self._namespaces: dict[bytes | None, str] = {}
        self._open_pointer_read = _MULTI + pack_command([b"HGET", f"{prefix}:meta".encode(), ACTIVE_SNAPSHOT.encode()])

    def _call(self, packed: bytes, replies: int = 1) -> Any:
        """Send packed commands on this thread's link; return the last reply.

        A broken socket (restarted server, idle timeout) gets one retry on a
        fresh one: reads are idempotent.
        """
        link = self._links.link
        if link is None:
            link = self._links.link = (
                RespLink(self.url, self.read_spin_us) if supports(self.url) else _Link(self._client)
            )
            with self._lock:
                self._opened.append(link)
        try:
            return link.call(packed, replies)
        except (redis.ConnectionError, redis.TimeoutError):
            link.close()
            return link.call(packed, replies)

    def _space(self, snapshot: str) -> str:
        """Key prefix of a namespace: ``mlsys`` for the base one, ``mlsys@<snapshot>`` for a snapshot."""
        return self.prefix if snapshot == BASE else f"{self.prefix}@{check_snapshot_id(snapshot)}"

    def _head(self, snapshot: str, view: str) -> bytes:
        head = self._view_prefix.get((snapshot, view))
        if head is None:
            head = self._view_prefix[(snapshot, view)] = f"{self._space(snapshot)}:{view}:".encode()
        return head

    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE) -> int:
        space = self._space(snapshot)
        written = 0
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            keys = [f"{space}:{view}:{k}" for k, _, _, _ in chunk]
            args = [encode_row(ev, cr, values) for _, ev, cr, values in chunk]
            self._upsert(keys=keys, args=args)
            written += len(chunk)
        return written

    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        if not keys:
            return []
        return decode_rows(self._call(pack_command(self._mget([(view, keys)], snapshot))))

    def read_views(
        self, requests: Sequence[tuple[str, Sequence[str]]], snapshot: str | None = None
    ) -> list[list[OnlineRow | None]]:
        """Every view in one ``MGET``; with no ``snapshot``, the pointer too, atomically.

        ``MULTI; HGET pointer; MGET <keys in the namespace guessed>; EXEC``:
        the transaction runs with nothing in between, so the rows come from
        the namespace that was active when it ran, or, if the guess was
        stale (a switch happened since the last read), the reply names the
        new namespace and the read is sent again there. Measured here for
        100 keys, p99 0.15 ms against 0.26 ms for a Lua script that read the
        pointer and built the keys itself. (All of a request's keys go into
        one ``MGET``; under Redis Cluster they would need one hash slot.)
        """
        counts = [len(keys) for _, keys in requests]
        if not sum(counts):
            return [[] for _ in requests]
        if snapshot is not None:
            raw = self._call(pack_command(self._mget(requests, snapshot)))
        else:
            guess = self._pointer_guess
            for _ in range(8):
                packed = self._open_pointer_read + pack_command(self._mget(requests, guess)) + _EXEC
                pointer, raw = self._call(packed, replies=4)
                active = self._namespaces.get(pointer)
                if active is None:  # a pointer value not seen before: check it once, not per read
                    active = self._namespaces[pointer] = BASE if not pointer else check_snapshot_id(pointer.decode())
                if active == guess:
                    break
                guess = self._pointer_guess = active
            else:
                raise StoreError("the active snapshot changed on every one of 8 reads in a row")
        rows = decode_rows(raw)
        out: list[list[OnlineRow | None]] = []
        start = 0
        for count in counts:
            out.append(rows[start : start + count])
            start += count
        return out

    def _mget(self, requests: Sequence[tuple[str, Sequence[str]]], snapshot: str) -> list[bytes]:
        command = [b"MGET"]
        for view, keys in requests:
            head = self._head(snapshot, view)
            command.extend(head + k.encode() for k in keys)
        return command

    def get_meta(self, name: str) -> str | None:
        value = self._client.hget(f"{self.prefix}:meta", name)
        return None if value is None else value.decode()

    def get_meta_many(self, names: Sequence[str]) -> list[str | None]:
        if not names:
            return []
        values = self._call(pack_command([b"HMGET", f"{self.prefix}:meta".encode(), *(n.encode() for n in names)]))
        return [None if value is None else value.decode() for value in values]

    def set_meta(self, name: str, value: str) -> None:
        self._client.hset(f"{self.prefix}:meta", name, value)

    def set_meta_many(self, values: dict[str, str]) -> None:
        self._client.hset(f"{self.prefix}:meta", mapping=values)  # one HSET: atomic in Redis

    def drop_snapshot(self, snapshot: str) -> None:
        if check_snapshot_id(snapshot) == BASE:
            raise StoreError("the base namespace is not a snapshot and cannot be dropped")
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=f"{self._space(snapshot)}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self._client.unlink(*batch)
                batch = []
        if batch:
            self._client.unlink(*batch)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for link in opened:
            link.close()
        self._client.close()
