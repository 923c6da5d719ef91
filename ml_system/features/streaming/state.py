"""Window state in Redis: each entity's recent events and the event ids already counted.

Why not in the consumers: Redis Streams hands entries round-robin to a group's consumers, and
one event feeds several entities (carrier, origin, route), so no partitioning could give each
entity one owner. The state is shared instead, and one Lua script per batch applies a batch's
events atomically: an event whose id the entity already holds is a duplicate (counted once,
however often it is delivered), an event older than ``allowed_lateness`` behind its entity's
newest is late, any other is added; the entity's events are then returned with a stamp from
Redis' clock that grows with every change. Consumers compute the values from those events and
write them with that stamp as the row's created time, so upsert-if-newer keeps the value of the
latest state whichever consumer writes last. A consumer killed anywhere holds nothing the others
need.

Layout (prefix ``streaming.state_prefix``): ``<p>:<view>:w:<key>`` one string per entity, msgpack of
``[newest_us, stamp_us, oldest_us, ids, ts_us, member, ts_us, member, ...]`` (ids ``\\0id\\0id\\0``,
member ``<ts_ns>|<v1>|...|<event_id>``). An entity still held in the earlier layout (a sorted set
``<p>:<view>:e:<key>`` beside a hash ``<p>:<view>:s:<key>``) is moved to this one at its next event;
the earlier ``<p>:<view>:seen:<event_id>`` keys expire on their own. A single Redis: keys are built
inside the script.
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

# ARGV[1] msgpack of the views
# {{head, lateness_us, hold_us, keep_last, prune_slack_us, legacy (1: look for the earlier layout), width}, ...};
# ARGV[2] msgpack of the items {{view (1-based), entity key, event id, ts_us, member}, ...}.
# Returns msgpack of {statuses, {{view, key, stamp_us, {newest, stamp, oldest, false, ts_us, member, ...}}, ...}}.
# msgpack both ways, because redis-py turning thousands of arguments into text and back cost more
# than the script itself. Times travel in microseconds (event times are parsed to microseconds):
# Lua numbers are doubles, exact for integers below 2^53, which microseconds since the epoch are
# and nanoseconds are not.
#
# An entity's whole state is one string, msgpack of {newest_us, stamp_us, oldest_us, ids, ts_us,
# member, ts_us, member, ...} where ids is "\0id\0id\0...": read once and written once per
# batch, however many of its events the batch holds, and no command per event. Each command a
# script calls costs Redis one to two microseconds of CPU on its own; the earlier layout (a sorted
# set of events, a hash of bookkeeping, a key per seen event id) called six per event in a batch
# of new entities, this one two per entity. Packing and unpacking the string, and looking an id up
# in ids (a plain string.find), run in C; a table per event (a map by id) cost more than it saved
# once entities hold tens of events.
#
# Duplicates are found among the entity's held ids. An entity holds every event within
# ``hold_us`` (the longer of its longest window and the allowed lateness) of its newest, so an
# event that is no longer held is older than the lateness and refused as late: either way it is
# never counted twice. Events past the hold are pruned once they are ``prune_slack_us`` older than
# that, so that most updates do not walk the entity's events in Lua.
_APPLY = """
local views = cmsgpack.unpack(ARGV[1])
local items = cmsgpack.unpack(ARGV[2])
local statuses = {}
local touched = {}
local order = {}
local SEP = string.char(0)

local function member_id(m, width)
  local at = 0
  for _ = 1, width + 1 do at = string.find(m, '|', at + 1, true) end
  return string.sub(m, at + 1)
end

local function load(head, key, v)
  local name = head .. 'w:' .. key
  local held = redis.call('GET', name)
  if held then return name, cmsgpack.unpack(held) end
  local state = {false, 0, false, SEP}
  if v[6] ~= 1 then return name, state end
  -- the layout before this one: a hash of bookkeeping beside a sorted set of events
  local old = head .. 's:' .. key
  local mark = redis.call('HMGET', old, 'newest', 'stamp')
  if not mark[1] then return name, state end
  local ev = head .. 'e:' .. key
  local with = redis.call('ZRANGE', ev, 0, -1, 'WITHSCORES')
  state[1], state[2] = tonumber(mark[1]), tonumber(mark[2] or '0')
  local ids = {SEP}
  for i = 1, #with, 2 do
    local ts = tonumber(with[i + 1])
    state[#state + 1] = ts
    state[#state + 1] = with[i]
    ids[#ids + 1] = member_id(with[i], v[7]) .. SEP
    if not state[3] or ts < state[3] then state[3] = ts end
  end
  state[4] = table.concat(ids)
  redis.call('DEL', old, ev)
  return name, state
end

local function prune(s, v)
  local cut = s[1] - v[3]
  local n = (#s - 4) / 2
  local old = 0
  for i = 5, #s, 2 do if s[i] < cut then old = old + 1 end end
  local drop = math.min(old, n - v[4])
  if drop <= 0 then return end
  local at = {}
  for i = 5, #s, 2 do at[#at + 1] = i end
  table.sort(at, function(a, b)
    if s[a] ~= s[b] then return s[a] < s[b] end
    return s[a + 1] < s[b + 1]
  end)
  local gone = {}
  for j = 1, drop do gone[at[j]] = true end
  local kept = {s[1], s[2], false, false}
  local ids = {SEP}
  for i = 5, #s, 2 do
    if not gone[i] then
      kept[#kept + 1] = s[i]
      kept[#kept + 1] = s[i + 1]
      ids[#ids + 1] = member_id(s[i + 1], v[7]) .. SEP
      if not kept[3] or s[i] < kept[3] then kept[3] = s[i] end
    end
  end
  kept[4] = table.concat(ids)
  return kept
end

for _, it in ipairs(items) do
  local v = views[it[1]]
  local key, eid, ts = it[2], it[3], it[4]
  local tkey = it[1] .. ':' .. key
  local e = touched[tkey]
  if e == nil then
    local name, state = load(v[1], key, v)
    e = {view = it[1], key = key, name = name, s = state, used = false, added = {}}
    touched[tkey] = e
    order[#order + 1] = tkey
  end
  local s = e.s
  local status = 0
  if e.added[eid] or string.find(s[4], SEP .. eid .. SEP, 1, true) then
    status = 1
  elseif s[1] and ts < s[1] - v[2] then
    status = 2
  else
    s[#s + 1] = ts
    s[#s + 1] = it[5]
    e.added[#e.added + 1] = eid
    e.added[eid] = true
    if not s[1] or ts > s[1] then s[1] = ts end
    if not s[3] or ts < s[3] then s[3] = ts end
  end
  statuses[#statuses + 1] = status
  if status ~= 2 then e.used = true end
end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local out = {}
for _, tkey in ipairs(order) do
  local e = touched[tkey]
  if e.used then
    local s = e.s
    local stamp = clock
    if stamp <= s[2] then stamp = s[2] + 1 end
    s[2] = stamp
    if #e.added > 0 then
      local ids = {s[4]}
      for i, eid in ipairs(e.added) do ids[i + 1] = eid .. SEP end
      s[4] = table.concat(ids)
    end
    local v = views[e.view]
    if s[3] and s[3] < s[1] - v[3] - v[5] then s = prune(s, v) or s end
    redis.call('SET', e.name, cmsgpack.pack(s))
    s[4] = false
    out[#out + 1] = {e.view, e.key, stamp, s}
  end
end
return cmsgpack.pack({statuses, out})
"""


class ViewParams(NamedTuple):
    """What the script needs of a view, sent once per batch."""

    head: str
    lateness_us: int
    hold_us: int
    """How far behind an entity's newest event its events are kept: the longest window or the lateness."""
    keep_last: int
    width: int
    """How many values a stored event of the view holds."""

    @property
    def slack_us(self) -> int:
        """How far past the hold the oldest event may be before the entity is pruned."""
        return max(self.hold_us // 16, 1_000_000)


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
    return "|".join([str(ts), *["" if v is None else repr(v) for v in values], event_id])


def parse_member(text: str, width: int) -> Event:
    parts = text.split("|", width + 1)
    if width == 1:  # the common one-column view, without a generator per event
        value = parts[1]
        return Event(int(parts[0]), parts[2], (float(value) if value else None,))
    return Event(int(parts[0]), parts[-1], tuple([None if p == "" else float(p) for p in parts[1 : width + 1]]))


class WindowState:
    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.prefix = prefix
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
            packed_views = msgpack.packb(
                [
                    (v.head, v.lateness_us, v.hold_us, v.keep_last, v.slack_us, self._holds_legacy(v.head), v.width)
                    for v in views
                ]
            )
            reply = self._apply(keys=[], args=[packed_views, packed_items])
        statuses, entities = msgpack.unpackb(reply, raw=False)
        # parsed afresh each time: a cache of parsed events cost three times the parsing here, most of
        # it in the garbage collector walking the cached tuples
        states = [
            EntityState(view - 1, key, int(stamp) * 1000, [parse_member(m, views[view - 1].width) for m in held[5::2]])
            for view, key, stamp, held in entities or ()
        ]
        return list(statuses or ()), states

    def close(self) -> None:
        self._client.close()
