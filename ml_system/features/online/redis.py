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
costs as much as the round trip itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from ml_system.errors import StoreError
from ml_system.features.online.base import ACTIVE_SNAPSHOT, BASE, OnlineRow, OnlineStore, check_snapshot_id
from ml_system.features.online.codec import pack_values, unpack_values

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


def decode_row(item: bytes) -> OnlineRow:
    return OnlineRow(int(item[:20]), int(item[20:40]), unpack_values(memoryview(item)[40:]))


# Resolve the snapshot pointer and MGET every view of a request in one round
# trip: the pointer is read inside the script, so all views come from one
# namespace even while a switch is happening. ARGV: meta field, base prefix,
# then per view its name, its key count and its keys. (Keys built inside a
# script suit a single Redis server or a replica set, not Redis Cluster.)
_READ_VIEWS = """
local ptr = redis.call('HGET', KEYS[1], ARGV[1])
local space = ARGV[2]
if ptr and ptr ~= '' then space = space .. '@' .. ptr end
local out = {}
local i = 3
while i <= #ARGV do
  local view = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local keys = {}
  for j = 1, n do keys[j] = space .. ':' .. view .. ':' .. ARGV[i + 1 + j] end
  if n > 0 then out[#out + 1] = redis.call('MGET', unpack(keys)) else out[#out + 1] = {} end
  i = i + 2 + n
end
return out
"""
_SCRIPT_MAX_KEYS = 4000  # Lua's unpack() limit is about 8,000 values


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, prefix: str = "mlsys") -> None:
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(url)
        self._upsert = self._client.register_script(_UPSERT_IF_NEWER)
        self._read_views = self._client.register_script(_READ_VIEWS)
        self._view_prefix: dict[tuple[str, str], str] = {}

    def _space(self, snapshot: str) -> str:
        """Key prefix of a namespace: ``mlsys`` for the base one, ``mlsys@<snapshot>`` for a snapshot."""
        return self.prefix if snapshot == BASE else f"{self.prefix}@{check_snapshot_id(snapshot)}"

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
        head = self._view_prefix.get((snapshot, view))
        if head is None:
            head = self._view_prefix[(snapshot, view)] = f"{self._space(snapshot)}:{view}:"
        raw = self._client.execute_command("MGET", *[head + k for k in keys])
        return [None if item is None else decode_row(item) for item in raw]

    def read_views(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[OnlineRow | None]]:
        """Pointer and every view in one round trip (see ``_READ_VIEWS``)."""
        if sum(len(keys) for _, keys in requests) > _SCRIPT_MAX_KEYS:
            return super().read_views(requests)
        args: list[str | int] = [ACTIVE_SNAPSHOT, self.prefix]
        for view, keys in requests:
            args.append(view)
            args.append(len(keys))
            args.extend(keys)
        replies = self._read_views(keys=[f"{self.prefix}:meta"], args=args)
        return [[None if item is None else decode_row(item) for item in reply] for reply in replies]

    def get_meta(self, name: str) -> str | None:
        value = self._client.hget(f"{self.prefix}:meta", name)
        return None if value is None else value.decode()

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
        self._client.close()
