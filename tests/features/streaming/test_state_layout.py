"""The window state's layout: one string per entity, and state left in the earlier layout carried over."""

from __future__ import annotations

import redis

from ml_system.features.streaming.state import ACCEPTED, DUPLICATE, Item, ViewParams, WindowState, member
from ml_system.features.streaming.windows import Event
from tests.features.streaming.conftest import RedisServer

HOUR_US = 3_600_000_000
T0 = 1_700_000_000_000_000  # microseconds


def _item(key: str, event_id: str, ts_us: int, amount: float) -> Item:
    return Item(0, key, event_id, ts_us, member(ts_us * 1000, [amount], event_id))


def test_an_entity_held_in_the_earlier_layout_keeps_its_events_and_moves_to_the_new_one(
    private_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(private_redis.url)
    head = "st:v:"
    # as the earlier script left it: a sorted set of events and a hash of bookkeeping
    old = [(T0 + n, member((T0 + n) * 1000, [float(n)], f"old{n}")) for n in range(3)]
    client.zadd(f"{head}e:u1", {m: ts for ts, m in old})
    client.hset(f"{head}s:u1", mapping={"newest": str(T0 + 2), "stamp": "5"})
    for n in range(3):
        client.set(f"{head}seen:old{n}", "1")
    state = WindowState(private_redis.url, "st", 5.0)
    view = ViewParams(head, HOUR_US, HOUR_US, 2, 1)

    statuses, entities = state.apply([view], [_item("u1", "new", T0 + 10, 9.5), _item("u1", "old1", T0 + 1, 1.0)])

    assert statuses == [ACCEPTED, DUPLICATE]
    (entity,) = entities
    assert sorted(entity.events) == [
        *(Event((T0 + n) * 1000, f"old{n}", (float(n),)) for n in range(3)),
        Event((T0 + 10) * 1000, "new", (9.5,)),
    ]
    assert entity.stamp > 5000  # above the stamp the earlier layout held (ns)
    assert client.exists(f"{head}e:u1", f"{head}s:u1") == 0 and client.exists(f"{head}w:u1") == 1


def test_events_past_the_longest_window_are_pruned_but_the_last_n_stay(private_redis: RedisServer) -> None:
    state = WindowState(private_redis.url, "st", 5.0)
    view = ViewParams("st:v:", HOUR_US, HOUR_US, 3, 1)
    early = [_item("u1", f"a{n}", T0 + n, float(n)) for n in range(5)]
    state.apply([view], early)
    # two hours later: the early events left the hour long ago, but the last 3 must stay for last_n=3
    _, (entity,) = state.apply([view], [_item("u1", "late", T0 + 2 * HOUR_US, 7.0)])
    assert sorted(e.id for e in entity.events) == ["a3", "a4", "late"]
    _, (entity,) = state.apply([view], [_item("u1", f"b{n}", T0 + 2 * HOUR_US + 1 + n, 1.0) for n in range(3)])
    # three newer events: a3 and a4 are no longer among the last 3, and out of the hour they go
    assert sorted(e.id for e in entity.events) == ["b0", "b1", "b2", "late"]
