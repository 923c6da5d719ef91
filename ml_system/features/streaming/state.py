"""Window state in Redis: each entity's aggregates, updated by each event, and the events it holds.

Why not in the consumers: Redis Streams hands entries round-robin to a group's consumers, and
one event feeds several entities (carrier, origin, route), so no partitioning could give each
entity one owner. The state is shared instead, and one Lua script per batch applies a batch's
events atomically: an event the entity already holds is a duplicate (counted once, however often
it is delivered), an event older than ``allowed_lateness`` behind its entity's newest is late, any
other is added to the entity's aggregates; the script returns each touched entity's values at its
newest event, with a stamp from Redis' clock that grows with every change. Consumers write them
with that stamp as the row's created time, so upsert-if-newer keeps the value of the latest state
whichever consumer writes last. A consumer killed anywhere holds nothing the others need.

Incremental, so that an event costs the same whether its entity holds ten events or ten thousand
(an hour of a busy entity): each time window keeps its count, its sum as exact partials (Shewchuk's,
as ``math.fsum`` keeps them: taking a value back out is exact, and the rounded result is bit for bit
``math.fsum`` of the window, so the offline path's values and these are equal) and, when asked for,
a monotonic queue for its max or min; when the newest event moves, the events that left a window
are read back from the held events by time range and taken out. ``last_n`` aggregations are
computed from the entity's ``keep_last`` newest events, kept beside the aggregates.

Layout (prefix ``streaming.state_prefix``), per view and entity: ``<p>:<view>:a:<key>`` a msgpack
string ``[newest_us, stamp_us, oldest_held_us, [per window: [count, partials, max queue, min
queue]], newest events]``, and ``<p>:<view>:z:<key>`` a sorted set of the held events, scored by
time, member ``<ts_ns>|<v1>|...|<event_id>`` (a redelivered event is byte for byte the same member,
so ``ZMSCORE`` finds it). Events are held for the longest window or the lateness, whichever is
longer, and pruned in steps. An entity still held in an earlier layout (one string ``w:<key>``;
before it, a sorted set ``e:<key>`` beside a hash ``s:<key>``) is moved to this one at its next
event. A single Redis: keys are built inside the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ml_system.features.streaming.redis_streams import unavailable_as
from ml_system.features.streaming.views import StreamFeatureView
from ml_system.features.streaming.windows import Plan, latest_values, plan

ACCEPTED, DUPLICATE, LATE = 0, 1, 2

# ARGV[1] msgpack of the views {{head, lateness_us, hold_us, prune_slack_us, legacy (1: look for the earlier
# layouts), width, keep_last}, ...}; ARGV[2] msgpack of the items {{view (1-based), entity key, event id,
# ts_us, v1, ..., vw (false when missing)}, ...}, flat: every table the script unpacks costs it.
# Returns {msgpack of {statuses, {{view, key, stamp_us}, ...}}, state, state, ...}: each touched
# entity's state as the string it stored, so that it is packed once and the consumer unpacks it in C.
# Times travel in microseconds (event times are parsed to microseconds): Lua numbers are doubles,
# exact for integers below 2^53, which microseconds since the epoch are and nanoseconds are not.
#
# An entity's state is one msgpack string, {newest_us, stamp_us, ids, ts_us, id, v1..vw, ts_us, id,
# ...}: its events in (time, id) order as numbers, and ids "\0id\0id\0...". Read once and written once
# per batch (``GET``, ``SET``: each command a script calls costs Redis one to two microseconds on its
# own, and the call from Lua as much again), however many of its events the batch holds. Numbers, not
# text: msgpack packs and unpacks them in C, where every string costs an allocation, and the consumer
# aggregates the columns by slicing the list, with no parsing per event. Kept in order, so an event
# arriving in order (nearly all) is appended and the consumer need not sort. Looking an id up in ids
# (a ``string.find``) runs in C; a table per event (a map by id) cost more than it saved once
# entities hold tens of events.
#
# Aggregating here instead (per-window counts, exact sums as Shewchuk partials, monotonic queues for
# max and min, updated by each event, so that nothing grows with the events held) was built and
# measured over 100,000 entities: the Lua that keeps them, and the nested tables they need, cost
# Redis 21 to 33 us per event, against 9 to 15 for this layout; held in a sorted set per entity,
# the two extra commands per entity alone cost 8 to 10.
#
# Duplicates are found among the entity's held ids. An entity holds every event within ``hold_us``
# (the longer of its longest window and the allowed lateness) of its newest, so an event that is no
# longer held is older than the lateness and refused as late: either way it is never counted twice.
# Events past the hold are pruned once the oldest is ``prune_slack_us`` older than that, keeping the
# ``keep_last`` newest for ``last_n``.
_APPLY = """
local views = cmsgpack.unpack(ARGV[1])
local items = cmsgpack.unpack(ARGV[2])
local statuses = {}
local touched = {}
local order = {}
local SEP = string.char(0)

-- a < b byte by byte, as Python orders ids (Lua's < follows the server's collation locale)
local function before(a, b)
  if a == b then return false end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- "<ts_ns>|<v1>|...|<vw>|<event_id>", as the earlier layouts stored an event -> id, {values}
local function parse(m, width)
  local vals = {}
  local at = string.find(m, '|', 1, true)
  for c = 1, width do
    local nx = string.find(m, '|', at + 1, true)
    local s = string.sub(m, at + 1, nx - 1)
    if s == '' then vals[c] = false else vals[c] = tonumber(s) end
    at = nx
  end
  return string.sub(m, at + 1), vals
end

-- put an event in its place by (time, id); the common case, the newest, appends
local function insert(s, size, ts, id, vals, from)
  local n = #s
  local k = n + 1
  while k > 4 do
    local pts = s[k - size]
    if pts < ts or (pts == ts and before(s[k - size + 1], id)) then break end
    k = k - size
  end
  for j = n, k, -1 do s[j + size] = s[j] end
  s[k] = ts
  s[k + 1] = id
  for c = 1, size - 2 do s[k + 1 + c] = vals[from + c] end
end

-- drop the events past the hold, but never the keep_last newest
local function prune(s, v, size)
  local cut = s[1] - v[3]
  local n = (#s - 3) / size
  local drop = 0
  while drop < n - v[7] and s[4 + drop * size] < cut do drop = drop + 1 end
  if drop == 0 then return s end
  local kept = {s[1], s[2], false}
  local ids = {SEP}
  for j = 4 + drop * size, #s do kept[#kept + 1] = s[j] end
  for j = 5, #kept, size do ids[#ids + 1] = kept[j] .. SEP end
  kept[3] = table.concat(ids)
  return kept
end

-- an entity held in an earlier layout, as this one's list, or nil; the old keys go
local function legacy(head, key, v, size)
  local name = head .. 'w:' .. key
  local events, stamp = {}, 0
  local held = redis.call('GET', name)
  if held then
    local s = cmsgpack.unpack(held)
    for i = 5, #s, 2 do events[#events + 1] = {s[i], s[i + 1]} end
    stamp = s[2]
    redis.call('DEL', name)
  else
    local old = head .. 's:' .. key
    local mark = redis.call('HMGET', old, 'newest', 'stamp')
    if not mark[1] then return nil end
    local ev = head .. 'e:' .. key
    local with = redis.call('ZRANGE', ev, 0, -1, 'WITHSCORES')
    for i = 1, #with, 2 do events[#events + 1] = {tonumber(with[i + 1]), with[i]} end
    stamp = tonumber(mark[2] or '0')
    redis.call('DEL', old, ev)
  end
  local s = {false, stamp, SEP}
  local ids = {SEP}
  for _, e in ipairs(events) do
    local id, vals = parse(e[2], v[6])
    insert(s, size, e[1], id, vals, 0)
    ids[#ids + 1] = id .. SEP
    if not s[1] or e[1] > s[1] then s[1] = e[1] end
  end
  s[3] = table.concat(ids)
  return s
end

for idx, it in ipairs(items) do
  local tkey = it[1] .. ':' .. it[2]
  local e = touched[tkey]
  if e == nil then
    e = {it[1], it[2]}
    touched[tkey] = e
    order[#order + 1] = tkey
  end
  e[#e + 1] = idx
end
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local meta = {}
local reply = {false}
for _, tkey in ipairs(order) do
  local e = touched[tkey]
  local v = views[e[1]]
  local size = v[6] + 2
  local name = v[1] .. 'a:' .. e[2]
  local held = redis.call('GET', name)
  local s
  local changed = false
  if held then
    s = cmsgpack.unpack(held)
  else
    s = v[5] == 1 and legacy(v[1], e[2], v, size)
    changed = s and true or false
    s = s or {false, 0, SEP}
  end
  local newest, lateness = s[1], v[2]
  local added = {}
  local used = false
  for j = 3, #e do
    local idx = e[j]
    local it = items[idx]
    local eid, ts = it[3], it[4]
    local status = 0
    if added[eid] or string.find(s[3], SEP .. eid .. SEP, 1, true) then
      status = 1
    elseif newest and ts < newest - lateness then
      status = 2
    else
      insert(s, size, ts, eid, it, 4)
      added[eid] = true
      added[#added + 1] = eid .. SEP
      if not newest or ts > newest then newest = ts end
    end
    statuses[idx] = status
    if status ~= 2 then used = true end
  end
  if #added > 0 then
    s[1] = newest
    s[3] = s[3] .. table.concat(added)
    if s[4] < newest - v[3] - v[4] then s = prune(s, v, size) end
  end
  if used then
    local stamp = clock
    if stamp <= s[2] then stamp = s[2] + 1 end
    s[2] = stamp
  end
  if used or changed then
    local packed = cmsgpack.pack(s)
    redis.call('SET', name, packed)
    if used then
      meta[#meta + 1] = {e[1], e[2], s[2]}
      reply[#reply + 1] = packed
    end
  end
end
reply[1] = cmsgpack.pack({statuses, meta})
return reply
"""


class ViewParams(NamedTuple):
    """What the script needs of a view, sent once per batch, and how its values are read back."""

    head: str
    lateness_us: int
    hold_us: int
    """How far behind an entity's newest event its events are kept: the longest window or the lateness."""
    keep_last: int
    plan: Plan
    kinds: tuple[type, ...]
    """Per aggregation: ``int`` or ``float`` (msgpack from Lua sends the float 2.0 as the integer 2)."""

    @property
    def width(self) -> int:
        """How many values a stored event of the view holds."""
        return len(self.plan.columns)

    @property
    def slack_us(self) -> int:
        """How far past the hold the oldest event may be before the entity is pruned."""
        return max(self.hold_us // 16, 1_000_000)

    @classmethod
    def of(cls, head: str, view: StreamFeatureView) -> ViewParams:
        p = plan(view)
        return cls(
            head,
            _us(view.allowed_lateness),
            max(_us(view.state_horizon), _us(view.allowed_lateness)),  # held events are what duplicates are found in
            view.keep_last,
            p,
            tuple(int if a.dtype == "int64" else float for a in view.aggregations),
        )


class Item(NamedTuple):
    """One event for one view's entity, as the script takes it."""

    view: int
    """Index into the batch's views."""
    key: str
    event_id: str
    ts_us: int
    values: tuple[float | None, ...]


class EntityState(NamedTuple):
    view: int
    key: str
    stamp: int
    """Nanoseconds: Redis' clock at the change, above every earlier stamp of the entity."""
    newest: int
    """Nanoseconds: the entity's newest event, the time its values hold at."""
    values: list[float | int | None]
    """The view's aggregations at ``newest``, in the view's order."""


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


class WindowState:
    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self._apply = self._client.register_script(_APPLY)
        self._legacy: dict[str, int] = {}

    def _holds_legacy(self, head: str) -> int:
        """1 if entities of the view may still be in an earlier layout (looked up once per consumer).

        A marker key says the view's state was found clean once; until then the keyspace is scanned,
        so that the script does not look for the earlier layouts at every new entity (a command or two
        per new entity).
        """
        found = self._legacy.get(head)
        if found is None:
            marker = f"{head}layout"
            found = 0
            if self._client.get(marker) != b"a":
                scans = (self._client.scan_iter(match=head + p, count=10_000) for p in ("w:*", "s:*"))
                found = int(any(True for scan in scans for _ in scan))
                if not found:
                    self._client.set(marker, "a")
            self._legacy[head] = found
        return found

    def head(self, view: str) -> str:
        return f"{self.prefix}:{view}:"

    def apply(self, views: Sequence[ViewParams], items: Sequence[Item]) -> tuple[list[int], list[EntityState]]:
        """Add a batch's events; returns each item's status and every touched entity's values and stamp."""
        if not items:
            return [], []
        packed_items = msgpack.packb(
            [(i.view + 1, i.key, i.event_id, i.ts_us, *[False if x is None else x for x in i.values]) for i in items]
        )
        with unavailable_as(f"window state: applying {len(items)} events"):
            packed_views = msgpack.packb(
                [
                    (v.head, v.lateness_us, v.hold_us, v.slack_us, self._holds_legacy(v.head), v.width, v.keep_last)
                    for v in views
                ]
            )
            head, *held = self._apply(keys=[], args=[packed_views, packed_items])
        statuses, touched = msgpack.unpackb(head, raw=False)
        states = []
        for (view, key, stamp), packed in zip(touched or (), held, strict=True):
            params = views[view - 1]
            state = msgpack.unpackb(packed, raw=False)
            values = latest_values(params.plan, state, params.width + 2)
            states.append(
                EntityState(
                    view - 1,
                    key,
                    int(stamp) * 1000,
                    int(state[0]) * 1000,
                    [None if x is None else kind(x) for x, kind in zip(values, params.kinds, strict=True)],
                )
            )
        return list(statuses or ()), states

    def close(self) -> None:
        self._client.close()
