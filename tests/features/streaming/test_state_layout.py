"""The window state: aggregates kept per entity and updated by each event, exact, whatever it holds.

The script keeps each entity's sums as exact partials, its max and min as monotonic queues and its
newest events for ``last_n``; these tests hold its values to ``window_values`` over the full
history, bit for bit, through out-of-order, duplicate and late events, windows emptying and the
held events being pruned, and carry state over from the earlier layouts.
"""

from __future__ import annotations

import random
from datetime import timedelta

import msgpack
import redis

from ml_system.features import Entity, Field
from ml_system.features.streaming.state import (
    ACCEPTED,
    DUPLICATE,
    LATE,
    EntityState,
    Item,
    ViewParams,
    WindowState,
)
from ml_system.features.streaming.views import Aggregation, EventSource, StreamFeatureView
from ml_system.features.streaming.windows import Event, plan, window_values
from tests.features.streaming.conftest import RedisServer

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
T0 = 1_700_000_000_000_000  # microseconds

ACCOUNT = Entity("account", ["account_id"])
TRADES = EventSource("trades", [Field("amount", "float64"), Field("fee", "float64")], table="trade_events")
VIEW = StreamFeatureView(
    name="account_trades",
    entities=[ACCOUNT],
    events=TRADES,
    aggregations=[
        Aggregation("amount", "count", window=timedelta(hours=1)),
        Aggregation("amount", "sum", window=timedelta(hours=1)),
        Aggregation("amount", "max", window=timedelta(hours=1)),
        Aggregation("amount", "min", window=timedelta(hours=1)),
        Aggregation("amount", "mean", window=timedelta(hours=3)),
        Aggregation("fee", "sum", window=timedelta(hours=3)),
        Aggregation("fee", "max", window=timedelta(minutes=20)),
        Aggregation("amount", "sum", last_n=3),
        Aggregation("amount", "max", last_n=3),
        Aggregation("fee", "mean", last_n=5),
        Aggregation("fee", "min", last_n=5),
        Aggregation("fee", "count", last_n=5),
    ],
    allowed_lateness=timedelta(minutes=30),
)
PLAN = plan(VIEW)


def _item(key: str, event_id: str, ts_us: int, values: tuple[float | None, ...]) -> Item:
    return Item(0, key, event_id, ts_us, values)


def _member(item: Item) -> str:
    """An event as the earlier layouts stored it: ``<ts_ns>|<v1>|...|<event_id>``."""
    values = ["" if v is None else repr(v) for v in item.values]
    return "|".join([str(item.ts_us * 1000), *values, item.event_id])


def _expected(events: list[Event]) -> list[object]:
    ordered = sorted(events)
    return window_values(PLAN, ordered, [e.ts for e in ordered], len(ordered))


def _same(got: list[object], want: list[object]) -> bool:
    return len(got) == len(want) and all(
        (g is None and w is None) or (g is not None and w is not None and g == w and type(g) is type(w))
        for g, w in zip(got, want, strict=True)
    )


def _amount(rng: random.Random) -> float | None:
    """Values that make a running float sum drift: mixed magnitudes, cancellations, tenths."""
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.2:
        return rng.choice([1e16, -1e16, 1e-9, -1e-9, 0.1, 0.2, 0.3])
    if pick < 0.3:
        return -0.0 if rng.random() < 0.5 else 0.0
    return round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))


def test_incremental_values_equal_the_full_history_bit_for_bit(private_redis: RedisServer) -> None:
    rng = random.Random(20261207)
    state = WindowState(private_redis.url, "st", 5.0)
    params = ViewParams.of(state.head(VIEW.name), VIEW)
    accounts = [f"a{n}" for n in range(6)]
    history: dict[str, list[Event]] = {a: [] for a in accounts}
    newest: dict[str, int] = {}
    accepted: set[tuple[str, str]] = set()  # redelivered events are recent, so still held
    now = T0
    previous: list[Item] = []
    checked = 0
    for batch_no in range(140):
        now += rng.randint(0, 5 * MINUTE_US) if batch_no % 35 else 4 * HOUR_US  # now and then every window empties
        items: list[Item] = []
        for n in range(rng.randint(1, 30)):
            key = rng.choice(accounts)
            ts = now - rng.randint(0, 20 * MINUTE_US)  # out of order within the lateness
            if rng.random() < 0.1:
                ts = items[-1].ts_us if items else ts  # ties in time, ordered by id
            items.append(_item(key, f"t{batch_no}-{n}", ts, (_amount(rng), _amount(rng))))
        # redelivered: events of the last batch that are still within the lateness
        items += [i for i in previous if i.ts_us >= now - 10 * MINUTE_US and rng.random() < 0.3]
        for key in accounts:  # and some later than the lateness
            if key in newest and rng.random() < 0.1:
                items.append(_item(key, f"late{batch_no}-{key}", newest[key] - 45 * MINUTE_US, (1.0, 1.0)))
        rng.shuffle(items)

        want_status = []
        for item in items:
            if (item.key, item.event_id) in accepted:
                want_status.append(DUPLICATE)
            elif item.key in newest and item.ts_us < newest[item.key] - 30 * MINUTE_US:
                want_status.append(LATE)
            else:
                want_status.append(ACCEPTED)
                accepted.add((item.key, item.event_id))
                history[item.key].append(Event(item.ts_us * 1000, item.event_id, item.values))
                newest[item.key] = max(newest.get(item.key, item.ts_us), item.ts_us)

        statuses, entities = state.apply([params], items)

        assert statuses == want_status
        assert {e.key for e in entities} == {i.key for i, s in zip(items, statuses, strict=True) if s != LATE}
        for entity in entities:
            assert entity.newest == newest[entity.key] * 1000
            want = _expected(history[entity.key])
            assert _same(entity.values, want), (batch_no, entity.key, entity.values, want)
            checked += 1
        previous = items
    assert checked > 300


def _held_ids(client: redis.Redis, params: ViewParams, key: str) -> list[str]:
    state = msgpack.unpackb(client.get(f"{params.head}a:{key}"), raw=False)
    return state[4 :: params.width + 2]


def test_held_events_past_the_longest_window_are_pruned_but_the_last_n_stay(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    state = WindowState(private_redis.url, "st", 5.0)
    params = ViewParams.of(state.head(VIEW.name), VIEW)
    early = [_item("u1", f"a{n}", T0 + n * MINUTE_US, (float(n), 1.0)) for n in range(200)]
    state.apply([params], early)
    # held: the three hours before the newest event (a19 on); pruned in steps, so a few older stay
    held = _held_ids(client, params, "u1")
    assert held[-1] == "a199" and "a19" in held and "a0" not in held and len(held) < 200
    # a day later every window has emptied; only the 5 newest stay, for last_n
    later = _item("u1", "b", T0 + 24 * HOUR_US, (7.0, None))
    _, (entity,) = state.apply([params], [later])
    assert _held_ids(client, params, "u1") == ["a196", "a197", "a198", "a199", "b"]
    events = [Event(i.ts_us * 1000, i.event_id, i.values) for i in [*early, later]]
    assert _same(entity.values, _expected(events))
    values = dict(zip(VIEW.feature_names, entity.values, strict=True))
    assert values["amount_count_1h"] == 1 and values["amount_sum_last3"] == 198.0 + 199.0 + 7.0
    assert values["fee_count_last5"] == 4 and values["fee_max_20m"] is None
    # redelivered early events: one still held is a duplicate, one no longer held is late; neither counts again
    statuses, (again,) = state.apply([params], [early[-1], early[-10]])
    assert statuses == [DUPLICATE, LATE] and again.values == entity.values


def _values_after(state: WindowState, params: ViewParams, items: list[Item]) -> tuple[list[int], EntityState]:
    statuses, (entity,) = state.apply([params], items)
    return statuses, entity


def test_an_entity_held_in_the_previous_layout_keeps_its_events_and_moves_to_this_one(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    state = WindowState(private_redis.url, "st", 5.0)
    params = ViewParams.of(state.head(VIEW.name), VIEW)
    head = params.head
    old = [_item("u1", f"old{n}", T0 + n * MINUTE_US, (float(n), 0.5)) for n in range(4)]
    # as the previous script left it: one msgpack string of [newest, stamp, oldest, ids, ts, member, ...]
    flat: list[object] = [old[-1].ts_us, 5, old[0].ts_us, "\0" + "\0".join(i.event_id for i in old) + "\0"]
    for i in old:
        flat += [i.ts_us, _member(i)]
    client.set(f"{head}w:u1", msgpack.packb(flat))

    new = _item("u1", "new", T0 + 10 * MINUTE_US, (9.5, None))
    statuses, entity = _values_after(state, params, [new, old[1]])

    assert statuses == [ACCEPTED, DUPLICATE]
    events = [Event(i.ts_us * 1000, i.event_id, i.values) for i in [*old, new]]
    assert _same(entity.values, _expected(events))
    assert entity.stamp > 5000  # above the stamp the previous layout held (ns)
    assert client.exists(f"{head}w:u1") == 0 and client.exists(f"{head}a:u1") == 1


def test_an_entity_held_in_the_layout_before_that_moves_too(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    state = WindowState(private_redis.url, "st", 5.0)
    params = ViewParams.of(state.head(VIEW.name), VIEW)
    head = params.head
    # a sorted set of events and a hash of bookkeeping
    old = [_item("u1", f"old{n}", T0 + n, (float(n), 1.0)) for n in range(3)]
    client.zadd(f"{head}e:u1", {_member(i): i.ts_us for i in old})
    client.hset(f"{head}s:u1", mapping={"newest": str(T0 + 2), "stamp": "5"})

    statuses, entity = _values_after(state, params, [_item("u1", "new", T0 + 10, (9.5, 2.0)), old[1]])

    assert statuses == [ACCEPTED, DUPLICATE]
    events = [Event(i.ts_us * 1000, i.event_id, i.values) for i in old]
    events.append(Event((T0 + 10) * 1000, "new", (9.5, 2.0)))
    assert _same(entity.values, _expected(events))
    assert client.exists(f"{head}e:u1", f"{head}s:u1") == 0
