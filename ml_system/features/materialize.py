"""Copy the latest feature values from the offline store into the online store.

Runs as a Ray Data job: each block reduces itself to the newest row per entity
and writes it straight to the online store from the worker. Because the online
write is "upsert if newer", blocks may land in any order, a retried block
writes nothing new, and an interrupted run resumes by running again.

Incremental runs keep two marks per view: how far in event time they wrote
(``materialized_until``) and which Delta version of the source they had read
(``IngestionMark``). A row that lands after a run but carries an earlier event
time (stream lag, a correction, a late upstream job) is in a data file the
last run did not have; the next run takes every such file whole, plus the rows
past the old event-time mark from the rest. Selecting by event time alone
would never serve that row online while the point-in-time join uses it for
training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ml_system.config import OnlineStoreConfig
from ml_system.errors import EntityDataError
from ml_system.features.definitions import FeatureView
from ml_system.features.keys import frame_keys
from ml_system.features.offline import OfflineStore, TableState
from ml_system.features.online import OnlineStore, open_online_store
from ml_system.features.online.base import BASE
from ml_system.features.pit_join import timestamps_ns


def latest_rows(df: pd.DataFrame, view: FeatureView) -> list[tuple[str, int, int, list[Any]]]:
    """Newest row per entity key in ``df``, as online-store write tuples."""
    if df.empty:
        return []
    src = view.source
    df = df.dropna(subset=list(view.join_keys))
    ev = timestamps_ns(df[src.timestamp_field], src.timestamp_field)
    cr = (
        timestamps_ns(df[src.created_timestamp_field], src.created_timestamp_field)
        if (src.created_timestamp_field and src.created_timestamp_field in df)
        else ev
    )
    keys, named = frame_keys(df, view)  # normalised by the entities' key types; empty keys name no entity
    work = pd.DataFrame({"__key": keys, "__ev": ev, "__cr": cr, "__order": np.arange(len(df))})[named]
    work = work.sort_values(["__ev", "__cr", "__order"], kind="stable").drop_duplicates("__key", keep="last")
    values = df[list(view.feature_names)].iloc[work["__order"].to_numpy()]
    rows = []
    for key, e, c, vals in zip(
        work["__key"], work["__ev"], work["__cr"], values.itertuples(index=False, name=None), strict=True
    ):
        rows.append((key, int(e), int(c), [_plain(v) for v in vals]))
    return rows


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: numpy types to Python, missing values to None."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


class WriteLatest:
    """Ray Data ``map_batches`` callable: filter to the window, reduce, write.

    ``new_files``: data files (relative to the table, as in the batch's ``path`` column) whose rows
    count from the beginning of time, however old their event times: the files added since the last
    incremental run.
    """

    def __init__(
        self,
        view: FeatureView,
        online: OnlineStoreConfig,
        start_ns: int | None,
        end_ns: int,
        snapshot: str = BASE,
        new_files: frozenset[str] = frozenset(),
    ) -> None:
        self.view = view
        self.online = online
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.snapshot = snapshot
        self.new_files = new_files

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ts = timestamps_ns(batch[self.view.source.timestamp_field], self.view.source.timestamp_field)
        mask = ts <= self.end_ns
        if self.start_ns is not None:
            after = ts > self.start_ns
            if self.new_files:
                after |= batch["path"].isin(self.new_files).to_numpy()
            mask &= after
        rows = latest_rows(batch[mask], self.view)
        if rows:
            store = open_online_store(self.online)
            try:
                store.write_batch(self.view.name, rows, self.snapshot, fields=self.view.feature_names)
            finally:
                store.close()
        return pd.DataFrame({"written": [len(rows)]})


def watermark_key(view: str, snapshot: str = BASE) -> str:
    """Meta name of a view's materialized-until timestamp in one namespace."""
    return f"materialized_until:{view}" if snapshot == BASE else f"materialized_until:{view}@{snapshot}"


def ingestion_key(view: str, snapshot: str = BASE) -> str:
    """Meta name of the source version a view's incremental runs have read, in one namespace."""
    return f"ingested_version:{view}" if snapshot == BASE else f"ingested_version:{view}@{snapshot}"


@dataclass(frozen=True)
class IngestionMark:
    """The source table (by Delta's table id, so a re-created table is not mistaken for it) and the
    version a run had read when it finished."""

    table_id: str
    version: int

    def dumps(self) -> str:
        return json.dumps({"table_id": self.table_id, "version": self.version})

    @staticmethod
    def loads(text: str | None) -> IngestionMark | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return IngestionMark(str(data["table_id"]), int(data["version"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: the next run re-reads every file, which is slower but complete


def window_ns(start: datetime | None, end: datetime, max_future_skew_s: float | None = None) -> tuple[int | None, int]:
    """Both bounds in UTC nanoseconds; an ``end`` beyond the clock plus the allowed skew is refused.

    Materializing up to a time that has not come yet would mark the view done up to then, and rows
    arriving for that stretch would be taken as already written.
    """

    def one(value: datetime) -> int:
        if value.tzinfo is None:
            raise EntityDataError(f"materialization bound {value} is naive; pass a timezone-aware datetime")
        return int(pd.Timestamp(value).tz_convert("UTC").value)

    end_ns = one(end)
    if max_future_skew_s is not None and end_ns > time.time_ns() + int(max_future_skew_s * 1e9):
        raise EntityDataError(
            f"materialization end {end.isoformat()} is in the future (more than features.max_future_skew_s="
            f"{max_future_skew_s:g} s past this machine's clock); pass an end that has already happened"
        )
    return (None if start is None else one(start)), end_ns


@dataclass(frozen=True)
class Stores:
    """What a materialization run reads and writes."""

    offline: OfflineStore
    online: OnlineStore
    online_config: OnlineStoreConfig


def materialize_view(
    stores: Stores,
    view: FeatureView,
    start_ns: int | None,
    end_ns: int,
    namespace: str,
    writer: type[WriteLatest],
    *,
    incremental: bool,
) -> int:
    """One view: rows in the window, and (incremental) every row of the files added since the last run.

    An incremental run starts at the view's mark; an ``end`` before the mark still takes the late rows
    up to the mark and moves nothing back. Returns the rows written.
    """
    table = view.source.table
    online = stores.online
    state = stores.offline.table_state(table)  # the version this run reads, whatever is appended meanwhile
    until = online.get_meta(watermark_key(view.name, namespace))
    prev_until = None if until is None else int(until)
    new_files: frozenset[str] = frozenset()
    if incremental and prev_until is not None:
        start_ns, end_ns = prev_until, max(end_ns, prev_until)
        new_files = _files_since(stores, table, state, ingestion_key(view.name, namespace))
    if start_ns is not None and start_ns >= end_ns and not new_files:
        return 0  # nothing arrived and the window is empty: no need to read the table
    cols = [*view.join_keys, view.source.timestamp_field, *view.feature_names]
    if view.source.created_timestamp_field:
        cols.append(view.source.created_timestamp_field)
    ds = stores.offline.read_dataset(table, version=state.version, columns=cols, include_paths=bool(new_files))
    counts = ds.map_batches(
        writer(view, stores.online_config, start_ns, end_ns, namespace, new_files), batch_format="pandas"
    ).take_all()
    # the marks move only now, after every block is written. A run that took every file of this version
    # up to at least the old mark leaves nothing behind in them, so the next run may start after it.
    if (start_ns is None or incremental) and (prev_until is None or end_ns >= prev_until):
        online.set_meta(ingestion_key(view.name, namespace), IngestionMark(state.table_id, state.version).dumps())
    if prev_until is None or end_ns > prev_until:
        online.set_meta(watermark_key(view.name, namespace), str(end_ns))
    return int(sum(r["written"] for r in counts))


def _files_since(stores: Stores, table: str, state: TableState, key: str) -> frozenset[str]:
    """Data files of ``state`` that the last incremental run had not read (all of them when unknown)."""
    mark = IngestionMark.loads(stores.online.get_meta(key))
    if mark is None or mark.table_id != state.table_id or mark.version > state.version:
        return state.files  # never recorded, or the table was re-created: take every file whole once
    seen = stores.offline.files_at(table, mark.version)
    return state.files if seen is None else state.files - seen
