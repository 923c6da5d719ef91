"""Point-in-time (as-of) join, on one partition and across a Ray cluster.

Ray Data's ``Dataset.join`` is equality-only, so the distributed join is built
from Ray tasks: both sides are hash-partitioned by the view's join keys (a
shuffle that never passes through the driver; a pandas ``entity_df`` is put
in the object store in blocks and cut by tasks too), feature rows outside the entity rows' time
range are dropped before the shuffle, and each partition runs a sorted as-of
search (polars, below). Views with the same join keys share one shuffle of the
entity rows; for a pandas ``entity_df`` every view is joined independently and
only the feature columns come back, scattered into place by row number.

Semantics (the README's "Feature store in Python"): for an entity row at time t a view contributes the latest
row with ``event_timestamp <= t`` and ``event_timestamp > t - ttl``; ties on
``event_timestamp`` go to the larger ``created_timestamp``, then to the later
row; no such row gives nulls.

Bitemporal joins (``bitemporal=True``) also require ``created_timestamp <= t``:
a correction or backfill written after t must not reach a training row for t
(Feast #6615), or the model trains on values it could not have seen when
serving. A plain ``merge_asof`` cannot express this, because the newest
*visible* row is not the newest row before t. The condition is
``max(event, created) <= t``, so rows are swept in order of that visibility
time, keeping a running best by (event, created, position) per key; the TTL is
checked on the best row only, since it carries the largest event timestamp of
all rows visible at t.

Inside a partition the search is polars' sorted ``join_asof`` on integer key
codes and nanoseconds: a numpy version of the same search (unique, lexsort,
searchsorted) measured here 10x slower at 2M rows, and DuckDB's ASOF join cannot
carry the running best that bitemporal needs. One code path serves both modes,
pinned down by the property tests against brute force and DuckDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import ray

from ml_system.errors import EntityDataError
from ml_system.features.partitioning import (
    KeyKind,
    common_kinds,
    hash_partition,
    key_kind,
    normalise_key,
    partition_ids,
    split_by,
)

ROW_ID = "__mlsys_row_id"
_TS = "__mlsys_feature_ts"
_CREATED = "__mlsys_feature_created"
_ENTITY_NS = "__mlsys_entity_ns"


@dataclass(frozen=True)
class JoinSpec:
    """One view's side of the join, in columns of its source table."""

    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    timestamp_field: str
    created_timestamp_field: str | None
    ttl: timedelta | None

    @property
    def ttl_ns(self) -> int | None:
        return None if self.ttl is None else self.ttl // timedelta(microseconds=1) * 1000


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
    if dtype == "datetime64[ns, UTC]":
        return series
    return series.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def timestamps_ns(series: pd.Series, column: str) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) as int64, without a copy when already ``datetime64[ns, UTC]``."""
    return np.asarray(ensure_utc(series, column).array.asi8)


# ---- one partition ---------------------------------------------------------------------------


def asof_positions(
    left_codes: np.ndarray,
    left_t: np.ndarray,
    right_codes: np.ndarray,
    right_ts: np.ndarray,
    right_created: np.ndarray | None,
    ttl_ns: int | None,
    bitemporal: bool = False,
) -> np.ndarray:
    """For every left row, the position of its right row (or -1).

    ``*_codes`` are int64 key codes shared by both sides (-1: null key, never
    matches); times are int64 nanoseconds. Right rows are ranked by
    (event, created, position); each row then carries the best rank visible
    so far in its group (in visibility order), exact visibility ties keep
    their last row (a shift comparison on rows sorted by visibility then key:
    ``unique`` took half the search time), and polars' sorted as-of search finds, per left row, the
    last right row visible at t. Without ``bitemporal`` visibility is the event
    time and the best rank is the row's own.
    """
    out = np.full(len(left_codes), -1, dtype=np.intp)
    n_right = len(right_codes)
    if n_right == 0 or len(left_codes) == 0:
        return out
    created = right_ts if right_created is None else right_created
    right = pl.DataFrame(
        {"g": right_codes, "ts": right_ts, "cr": created, "pos": np.arange(n_right, dtype=np.int64)}
    ).filter(pl.col("g") >= 0)
    if bitemporal:
        by_event = right.sort(["ts", "cr", "pos"]).with_row_index("rank").with_columns(pl.col("rank").cast(pl.Int64))
        right = (
            by_event.with_columns(vis=pl.max_horizontal("ts", "cr"))
            .sort(["vis", "g", "rank"])
            .with_columns(best=pl.col("rank").cum_max().over("g"))
        )
        rank_to_pos = by_event["pos"].to_numpy()
    else:
        right = right.rename({"ts": "vis"}).sort(["vis", "g", "cr", "pos"]).with_columns(best=pl.col("pos"))
        rank_to_pos = None
    # exact (key, visibility) ties sit next to each other: keep the last, which carries the winner
    tied_with_next = (pl.col("g") == pl.col("g").shift(-1)) & (pl.col("vis") == pl.col("vis").shift(-1))
    right = right.select("g", "vis", "best").filter(~tied_with_next.fill_null(False))
    left = pl.DataFrame({"g": left_codes, "t": left_t, "i": np.arange(len(left_codes), dtype=np.int64)}).sort("t")
    joined = left.join_asof(right, left_on="t", right_on="vis", by="g", strategy="backward", check_sortedness=False)
    rows = joined["i"].to_numpy()
    best = joined["best"].fill_null(-1).to_numpy()
    ok = (best >= 0) & (joined["g"].to_numpy() >= 0)
    chosen = np.where(ok, best, 0)
    if rank_to_pos is not None:
        chosen = rank_to_pos[chosen]
    if ttl_ns is not None:
        ok &= right_ts[chosen] > joined["t"].to_numpy() - np.int64(ttl_ns)
    out[rows[ok]] = chosen[ok]
    return out


def _key_codes(left: pd.DataFrame, right: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shared int64 codes for the join keys of both sides; -1 where any key is null."""
    n_left = len(left)
    combined: np.ndarray | None = None
    for key in keys:
        lcol, rcol = left[key], right[key]
        if lcol.dtype != rcol.dtype:
            kind = common_kinds([key_kind(lcol.dtype)], [key_kind(rcol.dtype)])[0]
            lcol, rcol = normalise_key(lcol, kind), normalise_key(rcol, kind)
        values = pd.concat([lcol, rcol], ignore_index=True)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        codes = codes.astype(np.int64, copy=False)
        if combined is None:
            combined = codes
        else:
            null = (combined < 0) | (codes < 0)
            combined = combined * np.int64(len(uniques) + 1) + codes
            combined = pd.factorize(combined)[0].astype(np.int64, copy=False)
            combined[null] = -1
    assert combined is not None
    return combined[:n_left], combined[n_left:]


def _feature_columns(right: pd.DataFrame, spec: JoinSpec, positions: np.ndarray) -> dict[str, Any]:
    """Gather matched values; unmatched rows get the column's null (ints become floats with NaN)."""
    cols: dict[str, Any] = {}
    for name in spec.features:
        values = right[name].array
        taken = pd.api.extensions.take(values, positions, allow_fill=True)
        cols[name] = taken
    return cols


def _prepare_right(right: pd.DataFrame, spec: JoinSpec, kinds: Sequence[KeyKind] | None = None) -> pd.DataFrame:
    """Feature rows in the join's internal layout: normalised keys, int64 nanosecond times, features."""
    cols: dict[str, Any] = {}
    for i, key in enumerate(spec.join_keys):
        cols[key] = (right[key] if kinds is None else normalise_key(right[key], kinds[i])).array
    cols[_TS] = timestamps_ns(right[spec.timestamp_field], spec.timestamp_field)
    if spec.created_timestamp_field:
        cols[_CREATED] = timestamps_ns(right[spec.created_timestamp_field], spec.created_timestamp_field)
    for name in spec.features:
        cols[name] = right[name].array
    return pd.DataFrame(cols)


def _empty_right(spec: JoinSpec) -> pd.DataFrame:
    """A view with no rows at all (no blocks) still yields its columns, all null."""
    cols: dict[str, Any] = {k: pd.array([], dtype="float64") for k in spec.join_keys}
    cols[_TS] = np.array([], dtype=np.int64)
    cols.update({name: np.array([], dtype="float64") for name in spec.features})
    return pd.DataFrame(cols)


def join_prepared(
    left: pd.DataFrame, left_t: np.ndarray, right: pd.DataFrame, spec: JoinSpec, bitemporal: bool
) -> dict[str, Any]:
    """Feature columns for ``left`` (in its row order) from a prepared right side."""
    keys = list(spec.join_keys)
    lcodes, rcodes = _key_codes(left, right, keys)
    created = right[_CREATED].to_numpy() if _CREATED in right else None
    positions = asof_positions(lcodes, left_t, rcodes, right[_TS].to_numpy(), created, spec.ttl_ns, bitemporal)
    return _feature_columns(right, spec, positions)


def asof_join(
    left: pd.DataFrame, right: pd.DataFrame, spec: JoinSpec, left_ts: str, bitemporal: bool = False
) -> pd.DataFrame:
    """Join one partition. ``left`` keeps its rows and order; features are appended."""
    left_t = timestamps_ns(left[left_ts], left_ts)
    prepared = _prepare_right(right.reset_index(drop=True), spec)
    result = left.reset_index(drop=True)
    result[left_ts] = ensure_utc(result[left_ts], left_ts)
    for name, values in join_prepared(result, left_t, prepared, spec, bitemporal).items():
        result[name] = values
    return result


# ---- across the cluster ----------------------------------------------------------------------


# Every join task reserves one CPU, and must use one. Polars otherwise starts a
# thread per core of the machine in every worker: concurrent tasks then fight
# over the cores, and a node that offers Ray one CPU quietly uses all of them.
# Measured here at 4M rows: unpinned, one node took 1.75 s with 1 CPU and 1.98 s
# with 2; pinned, 2.82 s and 1.94 s, and two 1-CPU nodes now beat one.
# Task-level env_vars merge with the job's runtime env; the workers that carry
# them are started once and reused.
JOIN_TASK_OPTIONS: dict[str, Any] = {"num_cpus": 1, "runtime_env": {"env_vars": {"POLARS_MAX_THREADS": "1"}}}


@dataclass(frozen=True)
class TimeRange:
    """Entity times of the query: feature rows that no entity row can see are dropped before the shuffle."""

    lo_ns: int
    hi_ns: int


@ray.remote(**JOIN_TASK_OPTIONS)
def _split_features(
    block: Any,
    spec: JoinSpec,
    kinds: tuple[KeyKind, ...],
    num_partitions: int,
    span: TimeRange | None,
    bitemporal: bool,
) -> list[pd.DataFrame] | pd.DataFrame:
    if not isinstance(block, pd.DataFrame):
        block = block.to_pandas()
    right = _prepare_right(block, spec, kinds)
    if span is not None:
        ts = right[_TS].to_numpy()
        keep = ts <= span.hi_ns
        if spec.ttl_ns is not None:
            keep &= ts > span.lo_ns - spec.ttl_ns
        if bitemporal and _CREATED in right:
            keep &= right[_CREATED].to_numpy() <= span.hi_ns
        if not keep.all():
            right = right[keep]
    parts = split_by(right, partition_ids(right, list(spec.join_keys), num_partitions, kinds), num_partitions)
    return parts if num_partitions > 1 else parts[0]


@ray.remote(**JOIN_TASK_OPTIONS)
def _time_range(block: Any, column: str) -> tuple[int, int] | None:
    if not isinstance(block, pd.DataFrame):
        block = block.to_pandas()
    if block.empty:
        return None
    ns = timestamps_ns(block[column], column)
    return int(ns.min()), int(ns.max())


@ray.remote(**JOIN_TASK_OPTIONS)
def _join_partition(
    counts: tuple[int, ...],
    specs: tuple[JoinSpec, ...],
    left_ts: str,
    bitemporal: bool,
    keep_left: bool,
    *parts: pd.DataFrame,
) -> pd.DataFrame:
    """``parts`` holds ``counts[0]`` left pieces, then ``counts[i+1]`` pieces of view i."""
    left = pd.concat(parts[: counts[0]], ignore_index=True) if counts[0] != 1 else parts[0].reset_index(drop=True)
    if left_ts == _ENTITY_NS:
        left_t = left[_ENTITY_NS].to_numpy()
    else:
        left = left.assign(**{left_ts: ensure_utc(left[left_ts], left_ts)})
        left_t = timestamps_ns(left[left_ts], left_ts)
    out: dict[str, Any] = {}
    start = counts[0]
    for spec, count in zip(specs, counts[1:], strict=True):
        pieces = parts[start : start + count]
        start += count
        if not pieces:
            right = _empty_right(spec)
        elif len(pieces) == 1:
            right = pieces[0].reset_index(drop=True)
        else:
            right = pd.concat(pieces, ignore_index=True)
        out.update(join_prepared(left, left_t, right, spec, bitemporal))
    if keep_left:
        return left.assign(**out)
    return pd.DataFrame({ROW_ID: left[ROW_ID].to_numpy(), **out})


def _stages(views: list[tuple[JoinSpec, list[ray.ObjectRef]]]) -> list[list[tuple[JoinSpec, list[ray.ObjectRef]]]]:
    """Views grouped by join keys: views that share keys share the entity shuffle."""
    grouped: dict[tuple[str, ...], list[tuple[JoinSpec, list[ray.ObjectRef]]]] = {}
    for spec, blocks in views:
        grouped.setdefault(spec.join_keys, []).append((spec, blocks))
    return list(grouped.values())


def _join_stage(
    left_parts: list[list[ray.ObjectRef]],
    stage: list[tuple[JoinSpec, list[ray.ObjectRef]]],
    kinds: tuple[KeyKind, ...],
    left_ts: str,
    num_partitions: int,
    span: TimeRange | None,
    bitemporal: bool,
    keep_left: bool,
) -> list[ray.ObjectRef]:
    right_parts: list[list[list[ray.ObjectRef]]] = []
    for spec, blocks in stage:
        per_block = []
        for block in blocks:
            refs = _split_features.options(num_returns=num_partitions).remote(
                block, spec, kinds, num_partitions, span, bitemporal
            )
            per_block.append(refs if num_partitions > 1 else [refs])
        right_parts.append([[refs[p] for refs in per_block] for p in range(num_partitions)])
    specs = tuple(spec for spec, _ in stage)
    out = []
    for p in range(num_partitions):
        counts = (len(left_parts[p]), *(len(view_parts[p]) for view_parts in right_parts))
        args = [*left_parts[p], *(ref for view_parts in right_parts for ref in view_parts[p])]
        out.append(_join_partition.remote(counts, specs, left_ts, bitemporal, keep_left, *args))
    return out


def _entity_chunks(rows: int, parts: int) -> int:
    """Blocks a driver-side entity frame is put as: one per million rows, at most one per partition."""
    return max(1, min(parts, -(-rows // 1_000_000)))


def default_partitions() -> int:
    """Two partitions per cluster CPU: enough slack to keep every core busy while a straggler finishes."""
    return max(2, int(ray.cluster_resources().get("CPU", 1)) * 2)


def join_pandas(
    entity_df: pd.DataFrame,
    views: list[tuple[JoinSpec, list[ray.ObjectRef]]],
    key_kinds: dict[tuple[str, ...], tuple[KeyKind, ...]],
    timestamp_column: str,
    num_partitions: int | None = None,
    bitemporal: bool = False,
) -> pd.DataFrame:
    """PIT join for an in-memory ``entity_df``: only its keys and times travel, only features come back.

    The entity frame's keys and times are put in the object store in a few
    blocks and cut by key hash in tasks, like the feature tables; views are
    joined concurrently.
    """
    parts = num_partitions or default_partitions()
    result = entity_df.reset_index(drop=True)
    result[timestamp_column] = ensure_utc(result[timestamp_column], timestamp_column)
    entity_ns = np.asarray(result[timestamp_column].array.asi8)
    span = None if len(entity_ns) == 0 else TimeRange(int(entity_ns.min()), int(entity_ns.max()))
    pending: list[tuple[list[str], list[ray.ObjectRef]]] = []
    for stage in _stages(views):
        keys = list(stage[0][0].join_keys)
        kinds = key_kinds[stage[0][0].join_keys]
        frame = pd.DataFrame({k: result[k] for k in keys})
        frame[_ENTITY_NS] = entity_ns
        frame[ROW_ID] = np.arange(len(frame))
        # cut by tasks, not here: hashing and gathering on the driver was serial work,
        # a sixth of the whole join at 4M rows
        bounds = np.linspace(0, len(frame), _entity_chunks(len(frame), parts) + 1).astype(int)
        chunks = [ray.put(frame.iloc[a:b]) for a, b in pairwise(bounds)]
        left_parts = hash_partition(chunks, keys, parts, kinds, JOIN_TASK_OPTIONS)
        refs = _join_stage(left_parts, stage, kinds, _ENTITY_NS, parts, span, bitemporal, keep_left=False)
        pending.append(([f for spec, _ in stage for f in spec.features], refs))
    for features, refs in pending:
        joined = pd.concat(ray.get(refs), ignore_index=True)
        where = np.empty(len(result), dtype=np.intp)
        where[joined[ROW_ID].to_numpy()] = np.arange(len(joined))
        for name in features:
            result[name] = joined[name].array.take(where)
    return result


def join_blocks(
    entity_blocks: list[ray.ObjectRef],
    views: list[tuple[JoinSpec, list[ray.ObjectRef]]],
    key_kinds: dict[tuple[str, ...], tuple[KeyKind, ...]],
    timestamp_column: str,
    num_partitions: int | None = None,
    bitemporal: bool = False,
) -> list[ray.ObjectRef]:
    """PIT join for entity rows already on the cluster; returns refs to pandas blocks, fetching nothing.

    Each stage's output blocks feed the next stage's shuffle directly.
    """
    if not entity_blocks:
        return []
    parts = num_partitions or default_partitions()
    ranges = [r for r in ray.get([_time_range.remote(b, timestamp_column) for b in entity_blocks]) if r is not None]
    span = TimeRange(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
    current = entity_blocks
    for stage in _stages(views):
        keys = list(stage[0][0].join_keys)
        kinds = key_kinds[stage[0][0].join_keys]
        left_parts = hash_partition(current, keys, parts, kinds, JOIN_TASK_OPTIONS)
        current = _join_stage(left_parts, stage, kinds, timestamp_column, parts, span, bitemporal, keep_left=True)
    return current
