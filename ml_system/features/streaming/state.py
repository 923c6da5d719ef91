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

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ml_system.features.streaming.redis_streams import unavailable_as
from ml_system.features.streaming.windows import Event

ACCEPTED, DUPLICATE, LATE = 0, 1, 2

# ARGV: dedup_ttl_s, then per item 7 values: view head, entity key, event id, ts_us, member, lateness_us,
# and "horizon_us:keep_last". Returns {statuses, then per touched entity {head, key, stamp_us, members}}.
# Times travel in microseconds (event times are parsed to microseconds): Lua numbers are doubles,
# exact for integers below 2^53, which microseconds since the epoch are and nanoseconds are not.
_APPLY = """
local ttl = tonumber(ARGV[1])
local statuses = {}
local touched = {}
local order = {}
local i = 2
while i <= #ARGV do
  local head, key, id, member = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+4]
  local ts, late = tonumber(ARGV[i+3]), tonumber(ARGV[i+5])
  local h, keep = string.match(ARGV[i+6], '([^:]+):([^:]+)')
  local horizon, keep_last = tonumber(h), tonumber(keep)
  i = i + 7
  local seen = head .. 'seen:' .. id
  local st = head .. 's:' .. key
  local ev = head .. 'e:' .. key
  local status = 0
  if redis.call('EXISTS', seen) == 1 then
    status = 1
  else
    local newest = tonumber(redis.call('HGET', st, 'newest') or '')
    if newest ~= nil and ts < newest - late then
      status = 2
    else
      redis.call('SET', seen, '1', 'EX', ttl)
      redis.call('ZADD', ev, ts, member)
      if newest == nil or ts > newest then
        newest = ts
        redis.call('HSET', st, 'newest', string.format('%.0f', ts))
      end
      local card = redis.call('ZCARD', ev)
      if card > keep_last then
        local old = redis.call('ZCOUNT', ev, '-inf', '(' .. string.format('%.0f', newest - horizon))
        local drop = math.min(old, card - keep_last)
        if drop > 0 then redis.call('ZREMRANGEBYRANK', ev, 0, drop - 1) end
      end
    end
  end
  statuses[#statuses + 1] = status
  if status ~= 2 then
    local name = head .. '\\n' .. key
    if touched[name] == nil then
      touched[name] = {head, key, st, ev}
      order[#order + 1] = name
    end
  end
end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local out = {}
out[1] = statuses
for _, name in ipairs(order) do
  local t = touched[name]
  local stamp = clock
  local last = tonumber(redis.call('HGET', t[3], 'stamp') or '0')
  if stamp <= last then stamp = last + 1 end
  redis.call('HSET', t[3], 'stamp', string.format('%.0f', stamp))
  out[#out + 1] = {t[1], t[2], string.format('%.0f', stamp), redis.call('ZRANGE', t[4], 0, -1)}
end
return out
"""


class Item(NamedTuple):
    """One event for one view's entity, as the script takes it."""

    head: str
    key: str
    event_id: str
    ts: int
    member: str
    lateness_ns: int
    horizon_ns: int
    keep_last: int


class EntityState(NamedTuple):
    head: str
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
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._apply = self._client.register_script(_APPLY)

    def head(self, view: str) -> str:
        return f"{self.prefix}:{view}:"

    def apply(self, items: Sequence[Item], widths: dict[str, int]) -> tuple[list[int], list[EntityState]]:
        """Add a batch's events; returns each item's status and every touched entity's events and stamp.

        ``widths``: the number of value columns of each view head.
        """
        if not items:
            return [], []
        args: list[str | int] = [self.dedup_ttl_s]
        for it in items:
            args += [
                it.head,
                it.key,
                it.event_id,
                it.ts // 1000,
                it.member,
                it.lateness_ns // 1000,
                f"{it.horizon_ns // 1000}:{it.keep_last}",
            ]
        with unavailable_as(f"window state: applying {len(items)} events"):
            reply = self._apply(keys=[], args=args)
        statuses = [int(s) for s in reply[0]]
        states = [
            EntityState(head, key, int(stamp) * 1000, [parse_member(m, widths[head]) for m in members])
            for head, key, stamp, members in reply[1:]
        ]
        return statuses, states

    def close(self) -> None:
        self._client.close()
