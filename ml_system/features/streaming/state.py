"""Window state in Redis: each entity's recent events and the event ids already counted.

Why not in the consumers: Redis Streams hands entries round-robin to a group's consumers, and
one event feeds several entities (carrier, origin, route), so no partitioning could give each
entity one owner. The state is shared instead, and one Lua script per batch applies a batch's
events atomically: an event id already seen is a duplicate (counted once, however often it is
delivered), an event older than ``allowed_lateness`` behind its entity's newest is late, any other
is added; the entity's events are then returned with a stamp from Redis' clock that grows with
every change. Consumers compute the values from those events and write them with that stamp as
the row's created time, so upsert-if-newer keeps the value of the latest state whichever consumer
writes last. A consumer killed anywhere holds nothing the others need.

Layout (prefix ``streaming.state_prefix``): ``<p>:<view>:e:<key>`` a sorted set of events
(score: event time in microseconds; member ``<ts_ns>|<v1>|...|<event_id>``), ``<p>:<view>:s:<key>``
a hash (newest event time, last stamp), ``<p>:<view>:seen:<event_id>`` a key per counted event
that expires after ``dedup_ttl_s``. A single Redis: keys are built inside the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ml_system.features.streaming.redis_streams import unavailable_as
from ml_system.features.streaming.windows import Event

ACCEPTED, DUPLICATE, LATE = 0, 1, 2

# ARGV[1] dedup_ttl_s; ARGV[2] msgpack of the views {{head, lateness_us, horizon_us, keep_last}, ...};
# ARGV[3] msgpack of the items {{view (1-based), entity key, event id, ts_us, member}, ...}.
# Returns msgpack of {statuses, {{view, key, stamp_us, members}, ...}}. msgpack both ways, because
# redis-py turning thousands of arguments into text and back cost more than the script itself.
# Times travel in microseconds (event times are parsed to microseconds): Lua numbers are doubles,
# exact for integers below 2^53, which microseconds since the epoch are and nanoseconds are not.
# An entity's bookkeeping is read once and written once per batch, however many of its events
# the batch holds (and pruned once); an event costs two commands of its own (SET NX, ZADD).
_APPLY = """
local ttl = tonumber(ARGV[1])
local views = cmsgpack.unpack(ARGV[2])
local items = cmsgpack.unpack(ARGV[3])
local statuses = {}
local touched = {}
local order = {}
for _, it in ipairs(items) do
  local v = views[it[1]]
  local head, key, ts, member = v[1], it[2], it[4], it[5]
  local name = head .. 's:' .. key
  local e = touched[name]
  if e == nil then
    local held = redis.call('HMGET', name, 'newest', 'stamp')
    e = {view = it[1], key = key, ev = head .. 'e:' .. key, newest = tonumber(held[1] or ''),
         stamp = tonumber(held[2] or '0'), used = false}
    touched[name] = e
    order[#order + 1] = name
  end
  local seen = head .. 'seen:' .. it[3]
  local status = 0
  if not redis.call('SET', seen, '1', 'EX', ttl, 'NX') then
    status = 1
  elseif e.newest ~= nil and ts < e.newest - v[2] then
    status = 2
    redis.call('DEL', seen)
  else
    redis.call('ZADD', e.ev, ts, member)
    if e.newest == nil or ts > e.newest then e.newest = ts end
  end
  statuses[#statuses + 1] = status
  if status ~= 2 then e.used = true end
end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local out = {}
for _, name in ipairs(order) do
  local e = touched[name]
  if e.used then
    local stamp = clock
    if stamp <= e.stamp then stamp = e.stamp + 1 end
    local v = views[e.view]
    local old = redis.call('ZCOUNT', e.ev, '-inf', '(' .. string.format('%.0f', e.newest - v[3]))
    if old > 0 then  -- past the longest window: keep only what the last-N aggregations need
      local drop = math.min(old, redis.call('ZCARD', e.ev) - v[4])
      if drop > 0 then redis.call('ZREMRANGEBYRANK', e.ev, 0, drop - 1) end
    end
    redis.call('HSET', name, 'newest', string.format('%.0f', e.newest), 'stamp', string.format('%.0f', stamp))
    out[#out + 1] = {e.view, e.key, stamp, redis.call('ZRANGE', e.ev, 0, -1)}
  end
end
return cmsgpack.pack({statuses, out})
"""


class ViewParams(NamedTuple):
    """What the script needs of a view, sent once per batch."""

    head: str
    lateness_us: int
    horizon_us: int
    keep_last: int
    width: int
    """How many values a stored event of the view holds."""


class Item(NamedTuple):
    """One event for one view's entity, as the script takes it."""

    view: int
    """Index into the batch's views."""
    key: str
    event_id: str
    ts_us: int
    member: str


class EntityState(NamedTuple):
    view: int
    key: str
    stamp: int
    """Nanoseconds: Redis' clock at the change, above every earlier stamp of the entity."""
    events: list[Event]


def member(ts: int, values: Sequence[float | None], event_id: str) -> str:
    """An event as stored: exact (a float's ``repr`` reads back as the same float); the id last, as it may hold '|'."""
    return "|".join([str(ts), *("" if v is None else repr(v) for v in values), event_id])


def parse_member(text: str, width: int) -> Event:
    parts = text.split("|", width + 1)
    return Event(int(parts[0]), parts[-1], tuple(None if p == "" else float(p) for p in parts[1 : width + 1]))


class WindowState:
    def __init__(self, url: str, prefix: str, dedup_ttl_s: int, timeout_s: float) -> None:
        self.prefix = prefix
        self.dedup_ttl_s = dedup_ttl_s
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._apply = self._client.register_script(_APPLY)

    def head(self, view: str) -> str:
        return f"{self.prefix}:{view}:"

    def apply(self, views: Sequence[ViewParams], items: Sequence[Item]) -> tuple[list[int], list[EntityState]]:
        """Add a batch's events; returns each item's status and every touched entity's events and stamp."""
        if not items:
            return [], []
        packed_views = msgpack.packb([(v.head, v.lateness_us, v.horizon_us, v.keep_last) for v in views])
        packed_items = msgpack.packb([(i.view + 1, i.key, i.event_id, i.ts_us, i.member) for i in items])
        with unavailable_as(f"window state: applying {len(items)} events"):
            reply = self._apply(keys=[], args=[self.dedup_ttl_s, packed_views, packed_items])
        statuses, entities = msgpack.unpackb(reply, raw=False)
        # parsed afresh each time: a cache of parsed events cost three times the parsing here, most of
        # it in the garbage collector walking the cached tuples
        states = [
            EntityState(view - 1, key, int(stamp) * 1000, [parse_member(m, views[view - 1].width) for m in members])
            for view, key, stamp, members in entities or ()
        ]
        return list(statuses or ()), states

    def close(self) -> None:
        self._client.close()
