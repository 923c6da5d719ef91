"""Online reads have a deadline: a stalled store is an error within it, and reads recover by themselves.

Redis is stalled with ``SIGSTOP`` on a private ``redis-server`` started here (never the
session's shared one), and resumed with ``SIGCONT`` in a ``finally``. SQLite is held by a
connection that took the file in exclusive locking mode. Each read runs in a thread that
must finish (with the error) long before a hang would end: no timing is asserted beyond
"did not hang".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ml_system.errors import StoreUnavailableError
from ml_system.features import Entity, FeatureView, Field, OnlineFeatureReader
from ml_system.features.definitions import DeltaSource
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.sqlite import SqliteOnlineStore

HANG = 20.0  # seconds after which a read that has not returned counts as hung
view = FeatureView("stats", [Entity("driver", ["driver_id"])], [Field("rate")], DeltaSource("stats"))


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returned or raised, from a thread that must finish within ``HANG``."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), "the read hung instead of failing within its deadline"
    return box[0]


@pytest.mark.parametrize("fast_read_link", [True, False])
def test_a_stalled_redis_fails_reads_within_the_deadline_and_they_recover(
    private_redis: tuple[str, subprocess.Popen[bytes]], fast_read_link: bool
) -> None:
    url, proc = private_redis
    store = RedisOnlineStore(url, read_timeout_s=0.3, fast_read_link=fast_read_link)
    store.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    reader = OnlineFeatureReader(store, {"stats": view}, ["stats:rate"])
    assert reader.read([{"driver_id": 1}]).values["rate"] == [0.5]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for call in (
            lambda: reader.read([{"driver_id": 1}]),
            lambda: store.read("stats", ["1"]),
            store.active_snapshot,
            lambda: store.get_meta_many(["a", "b"]),
        ):
            failed = outcome(call)
            assert isinstance(failed, StoreUnavailableError), failed
            assert "did not answer within 0.3 s" in str(failed)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # the stalled replies arrive now, on connections that were dropped: a read gets only its own answer
    assert outcome(lambda: reader.read([{"driver_id": 1}])).values["rate"] == [0.5]
    assert outcome(lambda: store.get_meta_many(["a"])) == [None]
    store.close()


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "online.db")
    store = SqliteOnlineStore(path, read_timeout_s=0.3)
    store.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    reader = OnlineFeatureReader(store, {"stats": view}, ["stats:rate"])
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a materialization mid-transaction
    writer.execute("DELETE FROM fv_stats")
    try:
        assert outcome(lambda: reader.read([{"driver_id": 1}])).values["rate"] == [0.5]
        assert outcome(lambda: SqliteOnlineStore(path, read_timeout_s=0.3).read("stats", ["1"]))[0] is not None
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    store.close()


def test_sqlite_reads_give_up_at_their_deadline_when_the_file_is_held(tmp_path: Path) -> None:
    """What can hold a WAL reader (a connection in exclusive locking mode, a WAL recovery) costs the deadline."""
    path = str(tmp_path / "online.db")
    setup = SqliteOnlineStore(path)
    setup.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    setup.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE fv_stats SET event_ts = 2")
    store = SqliteOnlineStore(path, read_timeout_s=0.3)  # a serving replica starting meanwhile
    reader = OnlineFeatureReader(store, {"stats": view}, ["stats:rate"])
    try:
        failed = outcome(lambda: reader.read([{"driver_id": 1}]))
        assert isinstance(failed, StoreUnavailableError), failed
        assert "waited past its deadline" in str(failed)
        assert isinstance(outcome(lambda: store.get_meta("x")), StoreUnavailableError)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert outcome(lambda: reader.read([{"driver_id": 1}])).values["rate"] == [0.5]
    store.close()


def test_a_redis_busy_in_a_script_is_unavailable_not_a_failure(
    private_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """``BUSY`` (and ``LOADING``) replies mean "ask again later": the same error as a stall."""
    url, _ = private_redis
    store = RedisOnlineStore(url, read_timeout_s=0.3)
    store.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    admin = redis.Redis.from_url(url)
    admin.config_set("busy-reply-threshold", 10)  # milliseconds of script before others get BUSY

    def spin() -> None:
        with contextlib.suppress(redis.ResponseError):  # "killed by user" once SCRIPT KILL ends it
            redis.Redis.from_url(url).eval("while true do end", 0)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        failed: Any = None
        for _ in range(100):  # until the script has run past the threshold
            failed = outcome(lambda: store.read("stats", ["1"]))
            if isinstance(failed, StoreUnavailableError) and "BUSY" in str(failed):
                break
        assert isinstance(failed, StoreUnavailableError) and "BUSY" in str(failed), failed
    finally:
        admin.script_kill()
        spinner.join(timeout=10)
        admin.close()
    assert outcome(lambda: store.read("stats", ["1"]))[0].values == [0.5]
    store.close()
