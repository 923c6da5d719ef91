"""Snapshot catalog, history and pointer under concurrent operators, and ``gc``, on both backends.

Each operator is its own store instance (its own connections) in its own thread: two
writers race on the same meta values of one SQLite file or one ``redis-server``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from ml_system.errors import StoreError
from ml_system.features import snapshots
from ml_system.features.online.base import BASE, OnlineStore
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.sqlite import SqliteOnlineStore

N = 200


@pytest.fixture(params=["sqlite", "redis"])
def operators(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], OnlineStore]]:
    """A factory of operators: each call opens another store on the same data."""
    opened: list[OnlineStore] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()

        def make() -> OnlineStore:
            opened.append(RedisOnlineStore(url))
            return opened[-1]
    else:

        def make() -> OnlineStore:
            opened.append(SqliteOnlineStore(str(tmp_path / "online.db")))
            return opened[-1]

    yield make
    for store in opened:
        store.close()


def side_by_side(*work: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "an operator did not finish"
    assert errors == []


def test_two_operators_recording_snapshots_lose_no_catalog_entry(operators: Callable[[], OnlineStore]) -> None:
    a, b = operators(), operators()
    side_by_side(
        lambda: [snapshots.record(a, f"a{i}", "2024-01-01", "ready") for i in range(N)],
        lambda: [snapshots.record(b, f"b{i}", "2024-01-01", "ready") for i in range(N)],
    )
    assert len([s for s in snapshots.listing(a) if s.id]) == 2 * N


def test_two_operators_activating_lose_no_history_entry(operators: Callable[[], OnlineStore]) -> None:
    a, b = operators(), operators()
    for prefix in "ab":
        for i in range(N):
            snapshots.record(a, f"{prefix}{i}", "2024-01-01", "ready")
    before: dict[str, list[str]] = {"a": [], "b": []}
    side_by_side(
        lambda: [before["a"].append(snapshots.activate(a, f"a{i}")) for i in range(N)],
        lambda: [before["b"].append(snapshots.activate(b, f"b{i}")) for i in range(N)],
    )
    history = json.loads(a.get_meta(snapshots.HISTORY) or "[]")
    assert len(history) == 2 * N
    # each activation pushed exactly what it replaced: the stack is the chain of those answers
    assert sorted(history) == sorted(before["a"] + before["b"])
    active = a.active_snapshot()
    assert sorted([*history, active]) == sorted(["", *(f"{p}{i}" for p in "ab" for i in range(N))])


def at_age(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def load(store: OnlineStore, sid: str, state: str = "ready") -> None:
    """A snapshot with one row in it, as a load leaves it."""
    store.write_batch("stats", [("1", 1, 1, [float(len(sid))])], sid, fields=["rate"])
    store.set_meta(f"materialized_until:stats@{sid}", "1")
    snapshots.record(store, sid, "2024-01-01", state)


def test_gc_reclaims_replaced_failed_and_abandoned_snapshots_only(operators: Callable[[], OnlineStore]) -> None:
    store = operators()
    for sid in ("sa", "sb", "sc", "sd"):
        load(store, sid)
        snapshots.activate(store, sid)  # served in turn: history [base, sa, sb, sc], sd active
    load(store, "sfailed", "failed")
    load(store, "sdead", "loading")
    store.set_meta(snapshots.HEARTBEAT + "sdead", at_age(3600))  # its process stopped beating an hour ago
    load(store, "slive", "loading")
    store.set_meta(snapshots.HEARTBEAT + "slive", at_age(1))
    load(store, "sready", "ready")  # loaded, never served

    report = snapshots.gc(store, keep=2, abandoned_after_s=600)
    assert report.reclaimed == ["sa", "sdead", "sfailed"]
    assert report.kept == ["sd", "sc", "sb"]
    assert {s.id for s in snapshots.listing(store)} == {BASE, "sb", "sc", "sd", "slive", "sready"}
    for sid in ("sa", "sdead", "sfailed"):
        assert store.read("stats", ["1"], sid) == [None]
    names = store.meta_names()
    assert not [n for n in names if n.endswith(("@sa", "@sdead", "@sfailed")) or n.endswith("heartbeat:sdead")]
    assert store.read("stats", ["1"], "sready") != [None] and "materialized_until:stats@sb" in names

    assert snapshots.gc(store, keep=1, abandoned_after_s=600).reclaimed == ["sb"]
    assert snapshots.rollback(store) == "sc"
    with pytest.raises(StoreError, match="roll back"):
        snapshots.rollback(store)  # older targets left the stack with their data
    assert snapshots.gc(store, keep=1).reclaimed == ["sd"]  # rolled back from: replaced, and not a target
    assert store.active_snapshot() == "sc"
    with pytest.raises(StoreError, match="at least one"):
        snapshots.gc(store, keep=0)


def test_a_load_reclaimed_as_abandoned_cannot_turn_ready(operators: Callable[[], OnlineStore]) -> None:
    store = operators()
    load(store, "slate", "loading")
    store.set_meta(snapshots.HEARTBEAT + "slate", at_age(7200))
    assert snapshots.gc(store).reclaimed == ["slate"]
    with pytest.raises(StoreError, match="'slate' is gone"):
        snapshots.record(store, "slate", "2024-01-01", "ready", expect=("loading",))
    with pytest.raises(StoreError, match="not ready"):
        snapshots.activate(store, "slate")


def test_a_heartbeat_keeps_a_long_load_alive(operators: Callable[[], OnlineStore]) -> None:
    store = operators()
    snapshots.record(store, "slong", "2024-01-01", "loading")
    beat = snapshots.Heartbeat(store, "slong", interval_s=3600)  # beats once now, then hourly
    try:
        assert snapshots.gc(store, abandoned_after_s=600).reclaimed == []
    finally:
        beat.stop()
    snapshots.record(store, "slong", "2024-01-01", "ready", expect=("loading",))
    assert store.get_meta(snapshots.HEARTBEAT + "slong") is None  # a finished load leaves no heartbeat
