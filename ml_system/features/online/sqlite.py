"""SQLite online store: the embedded default, like Feast's local mode.

One table per view, ``fv_{view}(entity_key TEXT PRIMARY KEY, event_ts
INTEGER, created_ts INTEGER, payload)``: timestamps are nanoseconds (UTC) and
the payload is the row's values as one MessagePack BLOB (``codec.py``), so a
lookup is one primary-key probe that returns every feature at once. WAL mode
lets the serving replicas read while materialization writes.

The read path keeps its SQL strings per (table, key count): sqlite3 caches
prepared statements by their text, so a repeated lookup prepares nothing, and
a single key uses ``=`` rather than ``IN``.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_system.errors import StoreError
from ml_system.features.online.base import BASE, OnlineRow, OnlineStore, check_snapshot_id
from ml_system.features.online.codec import pack_values, unpack_values

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _table(view: str, snapshot: str = BASE) -> str:
    if not _NAME.match(view):
        raise StoreError(f"view name '{view}' cannot be used as an online table name")
    return f"fv_{view}" if snapshot == BASE else f"fv_{view}__{check_snapshot_id(snapshot)}"


class SqliteOnlineStore(OnlineStore):
    def __init__(self, path: str) -> None:
        self.path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._known: set[str] = set()
        self._select: dict[tuple[str, str, int], str] = {}
        with self._conn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS mlsys_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False, cached_statements=512
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _ensure_table(self, view: str, snapshot: str = BASE) -> str:
        table = _table(view, snapshot)
        if table not in self._known:
            self._conn().execute(
                f"CREATE TABLE IF NOT EXISTS {table} (entity_key TEXT PRIMARY KEY, "
                "event_ts INTEGER NOT NULL, created_ts INTEGER NOT NULL, payload TEXT NOT NULL)"
            )
            self._known.add(table)
        return table

    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE) -> int:
        table = self._ensure_table(view, snapshot)
        conn = self._conn()
        params = [(key, ev, cr, pack_values(values)) for key, ev, cr, values in rows]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO {table} (entity_key, event_ts, created_ts, payload) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(entity_key) DO UPDATE SET event_ts=excluded.event_ts, "
                "created_ts=excluded.created_ts, payload=excluded.payload "
                f"WHERE excluded.event_ts > {table}.event_ts OR "
                f"(excluded.event_ts = {table}.event_ts AND excluded.created_ts >= {table}.created_ts)",
                params,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(params)

    def _select_sql(self, view: str, count: int, snapshot: str = BASE) -> str:
        sql = self._select.get((snapshot, view, count))
        if sql is None:
            table = self._ensure_table(view, snapshot)
            where = "entity_key = ?" if count == 1 else f"entity_key IN ({','.join('?' * count)})"
            sql = f"SELECT entity_key, event_ts, created_ts, payload FROM {table} WHERE {where}"
            self._select[(snapshot, view, count)] = sql
        return sql

    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        conn = self._conn()
        if len(keys) == 1:
            hit = conn.execute(self._select_sql(view, 1, snapshot), (keys[0],)).fetchone()
            return [None if hit is None else OnlineRow(hit[1], hit[2], unpack_values(hit[3]))]
        unique = list(dict.fromkeys(keys))
        found: dict[str, OnlineRow] = {}
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start : start + 900]
            for key, ev, cr, payload in conn.execute(self._select_sql(view, len(chunk), snapshot), chunk):
                found[key] = OnlineRow(ev, cr, unpack_values(payload))
        return [found.get(k) for k in keys]

    def get_meta(self, name: str) -> str | None:
        row = self._conn().execute("SELECT value FROM mlsys_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def get_meta_many(self, names: Sequence[str]) -> list[str | None]:
        if not names:
            return []
        marks = ",".join("?" * len(names))
        found = dict(self._conn().execute(f"SELECT name, value FROM mlsys_meta WHERE name IN ({marks})", list(names)))
        return [found.get(name) for name in names]

    def set_meta(self, name: str, value: str) -> None:
        self._conn().execute(
            "INSERT INTO mlsys_meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    def set_meta_many(self, values: dict[str, str]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO mlsys_meta (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def drop_snapshot(self, snapshot: str) -> None:
        if check_snapshot_id(snapshot) == BASE:
            raise StoreError("the base namespace is not a snapshot and cannot be dropped")
        conn = self._conn()
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
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
