"""SQLite online store: the embedded default, like Feast's local mode.

One table per view, ``fv_{view}(entity_key TEXT PRIMARY KEY, event_ts
INTEGER, created_ts INTEGER, payload)``: timestamps are nanoseconds (UTC) and
the payload is the row's layout id and values (``codec.py``), so a lookup is
one primary-key probe that returns every feature at once. WAL mode lets the
serving replicas read while materialization writes.

Reads and writes use separate connections (one of each per thread): a reader's
busy wait is bounded by ``read_timeout_s``, a writer's by ``write_timeout_s``.
WAL readers never wait for a writer; what can hold them (a connection that took
the file in exclusive locking mode, a WAL recovery) now costs at most the read
deadline and raises ``StoreUnavailableError``. Reads never create tables: a view
with no table yet reads as all missing, without the write lock a ``CREATE``
would wait for.

The read path keeps its SQL strings per (table, key count): sqlite3 caches
prepared statements by their text, so a repeated lookup prepares nothing, and
a single key uses ``=`` rather than ``IN``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msgpack import unpackb

from ml_system.config import SqliteOnlineStoreConfig
from ml_system.errors import StoreError, StoreUnavailableError
from ml_system.features.definitions import check_name
from ml_system.features.online.base import BASE, MetaChange, OnlineRow, OnlineStore, check_snapshot_id
from ml_system.features.online.codec import LAYOUT_WIDTH, TAG, pack_values, unpack_values


def _table(view: str, snapshot: str = BASE) -> str:
    check_name("feature view", view)
    return f"fv_{view}" if snapshot == BASE else f"fv_{view}__{check_snapshot_id(snapshot)}"


def _untagged(event_ts: int, created_ts: int, payload: Any) -> OnlineRow:
    """A row in a format from before layouts (the slow path)."""
    values, layout = unpack_values(payload)
    return OnlineRow(event_ts, created_ts, values, layout)


class SqliteOnlineStore(OnlineStore):
    config_model = SqliteOnlineStoreConfig

    def __init__(self, path: str, *, read_timeout_s: float = 0.5, write_timeout_s: float = 30.0) -> None:
        self.path = path
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._known: set[str] = set()
        self._select: dict[tuple[str, str, int], str] = {}

    @classmethod
    def from_config(cls, config: SqliteOnlineStoreConfig) -> SqliteOnlineStore:
        return cls(config.path, read_timeout_s=config.read_timeout_s, write_timeout_s=config.write_timeout_s)

    def _open(self, timeout: float) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False, cached_statements=512
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open the SQLite online store {self.path}: {exc}") from exc
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "reader", None)
        if conn is None:
            conn = self._local.reader = self._open(self.read_timeout_s)
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The thread's write connection; the first one sets the file up (WAL, meta table).

        Only writers do: a replica that only reads never takes a write lock, not even to open.
        """
        conn = getattr(self._local, "writer", None)
        if conn is None:
            conn = self._open(self.write_timeout_s)
            deadline = time.monotonic() + self.write_timeout_s
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("CREATE TABLE IF NOT EXISTS mlsys_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    break
                except sqlite3.OperationalError as exc:
                    # two first writers switching a new file to WAL at once: SQLite answers "locked" at
                    # once rather than through its busy wait, so wait here, within the write deadline
                    if "locked" in str(exc) and time.monotonic() < deadline:
                        time.sleep(0.005)
                        continue
                    conn.close()
                    raise self._failed(exc, "opening for writes") from exc
            self._local.writer = conn
        return conn

    def _failed(self, exc: sqlite3.Error, what: str) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreUnavailableError(f"SQLite online store {self.path}: {what} waited past its deadline ({text})")
        return StoreError(f"SQLite online store {self.path}: {what} failed: {text}")

    def _ensure_table(self, view: str, snapshot: str = BASE) -> str:
        table = _table(view, snapshot)
        if table not in self._known:
            self._writer().execute(
                f"CREATE TABLE IF NOT EXISTS {table} (entity_key TEXT PRIMARY KEY, "
                "event_ts INTEGER NOT NULL, created_ts INTEGER NOT NULL, payload TEXT NOT NULL)"
            )
            self._known.add(table)
        return table

    def _transaction(self, work: Any) -> Any:
        conn = self._writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._failed(exc, "a write") from exc
        try:
            out = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def write_batch(
        self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE, *, fields: Sequence[str]
    ) -> int:
        layout = self.register_layout(view, fields)
        width = len(fields)
        params = []
        for key, ev, cr, values in rows:
            if len(values) != width:
                raise StoreError(f"view '{view}': a row for '{key}' has {len(values)} values for {width} fields")
            params.append((key, ev, cr, pack_values(layout, values)))
        table = self._ensure_table(view, snapshot)
        self._transaction(
            lambda conn: conn.executemany(
                f"INSERT INTO {table} (entity_key, event_ts, created_ts, payload) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(entity_key) DO UPDATE SET event_ts=excluded.event_ts, "
                "created_ts=excluded.created_ts, payload=excluded.payload "
                f"WHERE excluded.event_ts > {table}.event_ts OR "
                f"(excluded.event_ts = {table}.event_ts AND excluded.created_ts >= {table}.created_ts)",
                params,
            )
        )
        return len(params)

    def _select_sql(self, view: str, count: int, snapshot: str = BASE) -> str:
        sql = self._select.get((snapshot, view, count))
        if sql is None:
            where = "entity_key = ?" if count == 1 else f"entity_key IN ({','.join('?' * count)})"
            sql = f"SELECT entity_key, event_ts, created_ts, payload FROM {_table(view, snapshot)} WHERE {where}"
            self._select[(snapshot, view, count)] = sql
        return sql

    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        conn = self._reader()
        row, unpack, width = OnlineRow, unpackb, LAYOUT_WIDTH  # the loop below is a 100-row read's largest cost
        try:
            if len(keys) == 1:
                hit = conn.execute(self._select_sql(view, 1, snapshot), (keys[0],)).fetchone()
                if hit is None:
                    return [None]
                _, ev, cr, p = hit
                tagged = p[0] == TAG  # a JSON text payload's first item is a str, never equal to the int
                return [row(ev, cr, unpack(p[width:]), p[:width]) if tagged else _untagged(ev, cr, p)]
            unique = list(dict.fromkeys(keys))
            found: dict[str, OnlineRow] = {}
            for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
                chunk = unique[start : start + 900]
                for key, ev, cr, p in conn.execute(self._select_sql(view, len(chunk), snapshot), chunk):
                    found[key] = row(ev, cr, unpack(p[width:]), p[:width]) if p[0] == TAG else _untagged(ev, cr, p)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [None] * len(keys)
            raise self._failed(exc, f"reading view '{view}'") from exc
        return [found.get(k) for k in keys]

    def delete(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> int:
        table = _table(view, snapshot)
        unique = list(dict.fromkeys(keys))

        def work(conn: sqlite3.Connection) -> int:
            removed = 0
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                removed += conn.execute(f"DELETE FROM {table} WHERE entity_key IN ({marks})", chunk).rowcount
            return removed

        try:
            return int(self._transaction(work))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise self._failed(exc, f"deleting from view '{view}'") from exc

    def _meta_rows(self, sql: str, params: Sequence[str], what: str) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # nothing was ever written
                return []
            raise self._failed(exc, what) from exc

    def get_meta(self, name: str) -> str | None:
        rows = self._meta_rows("SELECT value FROM mlsys_meta WHERE name = ?", (name,), f"reading meta value '{name}'")
        return rows[0][0] if rows else None

    def get_meta_many(self, names: Sequence[str]) -> list[str | None]:
        if not names:
            return []
        marks = ",".join("?" * len(names))
        found = dict(
            self._meta_rows(f"SELECT name, value FROM mlsys_meta WHERE name IN ({marks})", names, "reading meta values")
        )
        return [found.get(name) for name in names]

    def meta_names(self) -> list[str]:
        return [n for (n,) in self._meta_rows("SELECT name FROM mlsys_meta ORDER BY name", (), "listing meta values")]

    def set_meta(self, name: str, value: str) -> None:
        self.set_meta_many({name: value})

    def set_meta_many(self, values: dict[str, str]) -> None:
        self._transaction(
            lambda conn: conn.executemany(
                "INSERT INTO mlsys_meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )
        )

    def update_meta(self, names: Sequence[str], change: MetaChange) -> None:
        """One ``BEGIN IMMEDIATE`` transaction: concurrent writers wait for each other, none is lost."""

        def work(conn: sqlite3.Connection) -> None:
            marks = ",".join("?" * len(names))
            found = dict(conn.execute(f"SELECT name, value FROM mlsys_meta WHERE name IN ({marks})", list(names)))
            for name, value in change([found.get(n) for n in names]).items():
                if value is None:
                    conn.execute("DELETE FROM mlsys_meta WHERE name = ?", (name,))
                else:
                    conn.execute(
                        "INSERT INTO mlsys_meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                        (name, value),
                    )

        self._transaction(work)

    def drop_snapshot(self, snapshot: str) -> None:
        if check_snapshot_id(snapshot) == BASE:
            raise StoreError("the base namespace is not a snapshot and cannot be dropped")
        conn = self._writer()  # DROP TABLE waits for the write lock like any write
        suffix = f"__{snapshot}"
        tables = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'fv_%'")
            if name.endswith(suffix)
        ]
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            self._known.discard(table)

    def close(self) -> None:
        for role in ("reader", "writer"):
            conn = getattr(self._local, role, None)
            if conn is not None:
                conn.close()
                setattr(self._local, role, None)
