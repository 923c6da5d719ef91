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

Layout (prefix ``streaming.state_prefix``): ``<p>:<view>:w:<key>`` one string per entity, msgpack of
``[newest_us, stamp_us, oldest_us, ts_us, member, ts_us, member, ...]`` (member
``<ts_ns>|<v1>|...|<event_id>``), and ``<p>:<view>:seen:<event_id>`` a key per counted event that
expires after ``dedup_ttl_s``. An entity still held in the earlier layout (a sorted set
``<p>:<view>:e:<key>`` beside a hash ``<p>:<view>:s:<key>``) is moved to this one at its next event.
A single Redis: keys are built inside the script.
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

# ARGV[1] dedup_ttl_s; ARGV[2] msgpack of the views
# {{head, lateness_us, horizon_us, keep_last, prune_slack_us, legacy (1: look for the earlier layout)}, ...};
# ARGV[3] msgpack of the items {{view (1-based), entity key, event id, ts_us, member}, ...}.
# Returns msgpack of {statuses, {{view, key, stamp_us, {ts_us, member, ts_us, member, ...}}, ...}}.
# msgpack both ways, because redis-py turning thousands of arguments into text and back cost more
# than the script itself. Times travel in microseconds (event times are parsed to microseconds):
# Lua numbers are doubles, exact for integers below 2^53, which microseconds since the epoch are
# and nanoseconds are not.
# An entity's whole state is one string (msgpack {newest_us, stamp_us, oldest_us, ts_us, member,
# ...}): read once and written once per batch, however many of its events the batch holds. Each
# command a script calls costs Redis about a microsecond or two of CPU on its own, and the earlier
# layout (a sorted set of events beside a hash of bookkeeping) called five per entity; packing and
# unpacking the string runs in C. An event costs one command of its own (SET NX of its id).
# Events past the longest window are pruned once they are a sixteenth of it older than that, so
# that most updates do not walk the entity's events in Lua.
_APPLY = """
local ttl = tonumber(ARGV[1])
local views = cmsgpack.unpack(ARGV[2])
local items = cmsgpack.unpack(ARGV[3])
local statuses = {}
local touched = {}
local order = {}

local function load(head, key, legacy)
  local name = head .. 'w:' .. key
  local held = redis.call('GET', name)
  if held then return name, cmsgpack.unpack(held) end
  if not legacy then return name, {false, 0, false} end
  -- the layout before this one: a hash of bookkeeping beside a sorted set of events
  local old = head .. 's:' .. key
  local mark = redis.call('HMGET', old, 'newest', 'stamp')
  if not mark[1] then return name, {false, 0, false} end
  local ev = head .. 'e:' .. key
  local with = redis.call('ZRANGE', ev, 0, -1, 'WITHSCORES')
  local state = {tonumber(mark[1]), tonumber(mark[2] or '0'), false}
  for i = 1, #with, 2 do
    local ts = tonumber(with[i + 1])
    state[#state + 1] = ts
    state[#state + 1] = with[i]
    if not state[3] or ts < state[3] then state[3] = ts end
  end
  redis.call('DEL', old, ev)
  return name, state
end

local function prune(s, v)
  local cut = s[1] - v[3]
  local n = (#s - 3) / 2
  local old = 0
  for i = 4, #s, 2 do if s[i] < cut then old = old + 1 end end
  local drop = math.min(old, n - v[4])
  if drop <= 0 then return end
  local at = {}
  for i = 4, #s, 2 do at[#at + 1] = i end
  table.sort(at, function(a, b)
    if s[a] ~= s[b] then return s[a] < s[b] end
    return s[a + 1] < s[b + 1]
  end)
  local gone = {}
  for j = 1, drop do gone[at[j]] = true end
  local kept = {s[1], s[2], false}
  for i = 4, #s, 2 do
    if not gone[i] then
      kept[#kept + 1] = s[i]
      kept[#kept + 1] = s[i + 1]
      if not kept[3] or s[i] < kept[3] then kept[3] = s[i] end
    end
  end
  return kept
end

for _, it in ipairs(items) do
  local v = views[it[1]]
  local head, key, ts = v[1], it[2], it[4]
  local id = it[1] .. ':' .. key
  local e = touched[id]
  if e == nil then
    local name, state = load(head, key, v[6] == 1)
    e = {view = it[1], key = key, name = name, s = state, used = false, changed = false}
    touched[id] = e
    order[#order + 1] = id
  end
  local s = e.s
  local seen = head .. 'seen:' .. it[3]
  local status = 0
  if not redis.call('SET', seen, '1', 'EX', ttl, 'NX') then
    status = 1
  elseif s[1] and ts < s[1] - v[2] then
    status = 2
    redis.call('DEL', seen)
  else
    s[#s + 1] = ts
    s[#s + 1] = it[5]
    if not s[1] or ts > s[1] then s[1] = ts end
    if not s[3] or ts < s[3] then s[3] = ts end
  end
  statuses[#statuses + 1] = status
  if status ~= 2 then e.used = true end
end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local out = {}
for _, id in ipairs(order) do
  local e = touched[id]
  if e.used then
    local s = e.s
    local stamp = clock
    if stamp <= s[2] then stamp = s[2] + 1 end
    s[2] = stamp
    local v = views[e.view]
    if s[3] and s[3] < s[1] - v[3] - v[5] then s = prune(s, v) or s end
    redis.call('SET', e.name, cmsgpack.pack(s))
    out[#out + 1] = {e.view, e.key, stamp, s}
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
        self._legacy: dict[str, int] = {}

    def _holds_legacy(self, head: str) -> int:
        """1 if entities of the view may still be in the earlier layout (looked up once per consumer).

        A marker key says the view's state was found clean once; until then the keyspace is scanned,
        so that the script does not look for the earlier layout at every new entity (a command per
        new entity, a tenth of the script's cost in a run of new entities).
        """
        found = self._legacy.get(head)
        if found is None:
            marker = f"{head}layout"
            found = 0
            if self._client.get(marker) != b"w":
                found = int(any(True for _ in self._client.scan_iter(match=f"{head}s:*", count=10_000)))
                if not found:
                    self._client.set(marker, "w")
            self._legacy[head] = found
        return found

    def head(self, view: str) -> str:
        return f"{self.prefix}:{view}:"

    def apply(self, views: Sequence[ViewParams], items: Sequence[Item]) -> tuple[list[int], list[EntityState]]:
        """Add a batch's events; returns each item's status and every touched entity's events and stamp."""
        if not items:
            return [], []
        packed_items = msgpack.packb([(i.view + 1, i.key, i.event_id, i.ts_us, i.member) for i in items])
        with unavailable_as(f"window state: applying {len(items)} events"):
            slack = [max(v.horizon_us // 16, 1_000_000) for v in views]
            packed_views = msgpack.packb(
                [
                    (v.head, v.lateness_us, v.horizon_us, v.keep_last, gap, self._holds_legacy(v.head))
                    for v, gap in zip(views, slack, strict=True)
                ]
            )
            reply = self._apply(keys=[], args=[self.dedup_ttl_s, packed_views, packed_items])
        statuses, entities = msgpack.unpackb(reply, raw=False)
        # parsed afresh each time: a cache of parsed events cost three times the parsing here, most of
        # it in the garbage collector walking the cached tuples
        states = [
            EntityState(view - 1, key, int(stamp) * 1000, [parse_member(m, views[view - 1].width) for m in held[4::2]])
            for view, key, stamp, held in entities or ()
        ]
        return list(statuses or ()), states

    def close(self) -> None:
        self._client.close()
