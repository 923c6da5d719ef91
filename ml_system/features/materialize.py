"""Copy the latest feature values from the offline store into the online store.

Runs as a Ray Data job: each block reduces itself to the newest row per entity
and writes it straight to the online store from the worker. Because the online
write is "upsert if newer", blocks may land in any order, a retried block
writes nothing new, and an interrupted run resumes by running again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ml_system.config import OnlineStoreConfig
from ml_system.features.definitions import FeatureView
from ml_system.features.keys import frame_keys
from ml_system.features.online import open_online_store
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
    """Ray Data ``map_batches`` callable: filter to the window, reduce, write."""

    def __init__(
        self, view: FeatureView, online: OnlineStoreConfig, start_ns: int | None, end_ns: int, snapshot: str = BASE
    ) -> None:
        self.view = view
        self.online = online
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.snapshot = snapshot

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ts = timestamps_ns(batch[self.view.source.timestamp_field], self.view.source.timestamp_field)
        mask = ts <= self.end_ns
        if self.start_ns is not None:
            mask &= ts > self.start_ns
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


def window_ns(start: datetime | None, end: datetime) -> tuple[int | None, int]:
    def one(value: datetime) -> int:
        if value.tzinfo is None:
            from ml_system.errors import EntityDataError

            raise EntityDataError(f"materialization bound {value} is naive; pass a timezone-aware datetime")
        return int(pd.Timestamp(value).tz_convert("UTC").value)

    return (None if start is None else one(start)), one(end)
