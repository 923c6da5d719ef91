"""Point-in-time (as-of) join, on one partition and across a Ray cluster.

Ray Data's ``Dataset.join`` is equality-only, so the distributed join is built
from Ray tasks over the dataset's blocks: both sides are hash-partitioned by the
view's join keys (``partitioning.hash_partition``, a shuffle that never passes
through the driver), then each
partition runs a sorted as-of join (``pandas.merge_asof``). Several views are
joined one after another, each stage re-partitioning by its own keys.

Semantics (BRIEF §3): for an entity row at time t a view contributes the latest
row with ``event_timestamp <= t`` and ``event_timestamp > t - ttl``; ties on
``event_timestamp`` go to the larger ``created_timestamp``, then to the later
row; no such row gives nulls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from ml_system.errors import EntityDataError
from ml_system.features.partitioning import hash_partition

ROW_ID = "__mlsys_row_id"
_TS = "__mlsys_feature_ts"
_CREATED = "__mlsys_feature_created"


@dataclass(frozen=True)
class JoinSpec:
    """One view's side of the join, in columns of its source table."""

    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    timestamp_field: str
    created_timestamp_field: str | None
    ttl: timedelta | None


def ensure_utc(series: pd.Series, column: str) -> pd.Series:
    """Accept timezone-aware timestamps only; normalise to UTC nanoseconds.

    A naive timestamp is ambiguous (local? UTC?) and silently shifts every join
    by hours, so it is refused rather than guessed.
    """
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_timestamp(dtype.pyarrow_dtype):
        if dtype.pyarrow_dtype.tz is None:
            raise EntityDataError(
                f"column '{column}' holds naive timestamps; make them timezone-aware "
                f"(e.g. series.dt.tz_localize('UTC'))"
            )
        return series.astype("datetime64[ns, UTC]")
    if len(series) == 0 and pd.api.types.is_object_dtype(dtype):
        return series.astype("datetime64[ns, UTC]")
    if not isinstance(dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(series.dtype):
            raise EntityDataError(
                f"column '{column}' holds naive timestamps; make them timezone-aware "
                f"(e.g. series.dt.tz_localize('UTC'))"
            )
        raise EntityDataError(f"column '{column}' must hold timezone-aware timestamps, found {series.dtype}")
    return series.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def asof_join(left: pd.DataFrame, right: pd.DataFrame, spec: JoinSpec, left_ts: str) -> pd.DataFrame:
    """Join one partition. ``left`` keeps its rows and order; features are appended."""
    keys = list(spec.join_keys)
    out_cols = list(spec.features)
    if left.empty:
        result = left.copy()
        for col in out_cols:
            result[col] = pd.Series(dtype=right[col].dtype if col in right else "float64")
        return result
    left = left.copy()
    left[left_ts] = ensure_utc(left[left_ts], left_ts)
    right = right[
        [
            *keys,
            spec.timestamp_field,
            *([spec.created_timestamp_field] if spec.created_timestamp_field else []),
            *out_cols,
        ]
    ]
    right = right.rename(
        columns={
            spec.timestamp_field: _TS,
            **({spec.created_timestamp_field: _CREATED} if spec.created_timestamp_field else {}),
        }
    )
    right = right.dropna(subset=keys)
    right[_TS] = ensure_utc(right[_TS], spec.timestamp_field)
    right["__order"] = np.arange(len(right))
    sort_cols = [_TS, _CREATED, "__order"] if _CREATED in right else [_TS, "__order"]
    right = right.sort_values(sort_cols, kind="stable").drop_duplicates(subset=[*keys, _TS], keep="last")
    right = right.drop(columns=[c for c in ("__order", _CREATED) if c in right])

    left["__pos"] = np.arange(len(left))
    valid = left[keys].notna().all(axis=1).to_numpy()
    matched_part = left[valid].sort_values(left_ts, kind="stable")
    for key in keys:  # merge_asof needs identical key dtypes on both sides
        if matched_part[key].dtype != right[key].dtype:
            right[key] = right[key].astype(matched_part[key].dtype)
    tolerance = None
    if spec.ttl is not None:
        tolerance = pd.Timedelta(spec.ttl) - pd.Timedelta(1, "ns")  # strictly newer than t - ttl
    merged = pd.merge_asof(
        matched_part,
        right.sort_values(_TS, kind="stable"),
        left_on=left_ts,
        right_on=_TS,
        by=keys,
        direction="backward",
        allow_exact_matches=True,
        tolerance=tolerance,
    ).drop(columns=[_TS])
    unmatched = left[~valid]
    if len(unmatched):
        unmatched = unmatched.copy()
        for col in out_cols:
            unmatched[col] = pd.Series([None] * len(unmatched), index=unmatched.index, dtype=merged[col].dtype)
        merged = pd.concat([merged, unmatched], ignore_index=True)
    merged = merged.sort_values("__pos", kind="stable").drop(columns=["__pos"]).reset_index(drop=True)
    return merged


@ray.remote
def _join_partition(n_left: int, spec: JoinSpec, left_ts: str, *parts: pd.DataFrame) -> pd.DataFrame:
    left = pd.concat(parts[:n_left], ignore_index=True)
    right = pd.concat(parts[n_left:], ignore_index=True)
    return asof_join(left, right, spec, left_ts)


def distributed_asof_join(
    entity_blocks: list[ray.ObjectRef],
    views: list[tuple[JoinSpec, list[ray.ObjectRef]]],
    left_ts: str,
    num_partitions: int,
) -> list[ray.ObjectRef]:
    """Join every view onto the entity blocks; returns refs to pandas blocks.

    Nothing is fetched to the driver: each stage's output blocks feed the next
    stage's shuffle directly.
    """
    current = entity_blocks
    for spec, feature_blocks in views:
        keys = list(spec.join_keys)
        left_parts = hash_partition(current, keys, num_partitions)
        right_parts = hash_partition(feature_blocks, keys, num_partitions)
        current = [
            _join_partition.remote(len(left_parts[p]), spec, left_ts, *left_parts[p], *right_parts[p])
            for p in range(num_partitions)
        ]
    return current
