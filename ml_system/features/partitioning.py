"""Hash partitioning of Ray object blocks by key columns.

Ray Data's groupby sorts the whole dataset and its ``Dataset.join`` matches on
equality only; per-key work that needs whole groups (as-of joins, trailing
windows) only needs co-location. Splitting each block by a stable hash of the
keys with Ray tasks does that in one pass, with nothing routed through the
driver.

Hashing is native where it can be: integer keys are mixed with a splitmix64
finaliser and strings go through pandas' vectorised hashing, because turning
every key into a Python string first cost more than the rest of the split. The
caller says how each key is to be hashed (``KeyKind``) after looking at both
sides of a join, so equal values land in the same partition even when one side
holds ``int32`` and the other ``int64``; only mixed kinds (int against string)
fall back to hashing string forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import ray

KeyKind = Literal["int", "float", "str", "any"]

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def key_kind(dtype: Any) -> KeyKind:
    """How a key column of this dtype hashes natively (``any``: through its string form)."""
    if isinstance(dtype, pd.ArrowDtype):
        dtype = dtype.numpy_dtype if not pd.api.types.is_string_dtype(dtype) else pd.StringDtype()
    if pd.api.types.is_bool_dtype(dtype):
        return "any"
    if pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return "float"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "str"
    return "any"


def arrow_key_kind(dtype: Any) -> KeyKind:
    """``key_kind`` for a column known by its Arrow type (Delta schemas, Ray Dataset schemas)."""
    import pyarrow as pa

    if not isinstance(dtype, pa.DataType):
        return key_kind(dtype)
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "str"
    return "any"


def common_kinds(left: Sequence[KeyKind], right: Sequence[KeyKind]) -> tuple[KeyKind, ...]:
    """Per key, the hashing both sides agree on: ints with floats compare as floats, else strings."""
    out: list[KeyKind] = []
    for a, b in zip(left, right, strict=True):
        if a == b:
            out.append(a)
        elif {a, b} == {"int", "float"}:
            out.append("float")
        else:
            out.append("any")
    return tuple(out)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads consecutive ids over all partitions (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def normalise_key(series: pd.Series, kind: KeyKind) -> pd.Series:
    """The key as both sides of a join compare it (see ``common_kinds``)."""
    if kind == "int":
        return series.astype("int64", copy=False)
    if kind == "float":
        return series.astype("float64", copy=False)
    if kind == "str":
        return series
    return series.astype("string")


def key_hash(series: pd.Series, kind: KeyKind) -> np.ndarray:
    """A uint64 per row that is equal for equal keys in every process."""
    if kind == "int":
        return _mix(series.to_numpy(dtype="int64").view(np.uint64))
    if kind == "float":
        values = series.to_numpy(dtype="float64") + 0.0  # -0.0 and 0.0 hash alike
        return _mix(values.view(np.uint64))
    if kind == "any":
        series = series.astype("string")
    return pd.util.hash_pandas_object(series, index=False).to_numpy()


def partition_ids(
    df: pd.DataFrame, keys: list[str], num_partitions: int, kinds: Sequence[KeyKind] | None = None
) -> np.ndarray:
    """Partition of every row; ``kinds`` defaults to what each column's own dtype allows."""
    kinds = kinds or [key_kind(df[k].dtype) for k in keys]
    combined = np.zeros(len(df), dtype=np.uint64)
    for key, kind in zip(keys, kinds, strict=True):
        combined = _mix(combined * _GOLDEN + key_hash(df[key], kind))
    return (combined % np.uint64(num_partitions)).astype(np.intp)


def split_by(df: pd.DataFrame, ids: np.ndarray, num_partitions: int) -> list[pd.DataFrame]:
    """Cut ``df`` into ``num_partitions`` frames with one gather, not one boolean mask per partition."""
    if num_partitions == 1:
        return [df]
    order = np.argsort(ids, kind="stable")  # radix sort: ids are small integers
    bounds = np.searchsorted(ids[order], np.arange(num_partitions + 1))
    ordered = df.take(order)
    return [ordered.iloc[bounds[p] : bounds[p + 1]] for p in range(num_partitions)]


@ray.remote
def _split(
    block: Any, keys: list[str], num_partitions: int, kinds: Sequence[KeyKind] | None = None
) -> list[pd.DataFrame] | pd.DataFrame:
    if not isinstance(block, pd.DataFrame):
        block = block.to_pandas()
    parts = split_by(block, partition_ids(block, keys, num_partitions, kinds), num_partitions)
    return parts if num_partitions > 1 else parts[0]


def hash_partition(
    blocks: list[ray.ObjectRef],
    keys: list[str],
    num_partitions: int,
    kinds: Sequence[KeyKind] | None = None,
    task_options: dict[str, Any] | None = None,
) -> list[list[ray.ObjectRef]]:
    """Return ``parts[p]``: the refs of partition p cut from every block.

    ``kinds`` fixes how each key hashes (see ``common_kinds``); ``task_options``
    are Ray options for the split tasks (the join pins their threads).
    """
    per_block = []
    for block in blocks:
        refs = _split.options(num_returns=num_partitions, **(task_options or {})).remote(
            block, keys, num_partitions, kinds
        )
        per_block.append(refs if num_partitions > 1 else [refs])
    return [[refs[p] for refs in per_block] for p in range(num_partitions)]


@ray.remote
def _apply(fn: Callable[[pd.DataFrame], pd.DataFrame], *parts: pd.DataFrame) -> pd.DataFrame:
    return fn(pd.concat(parts, ignore_index=True))


def map_partitions(
    blocks: list[ray.ObjectRef], keys: list[str], fn: Callable[[pd.DataFrame], pd.DataFrame], num_partitions: int
) -> list[ray.ObjectRef]:
    """Run ``fn`` once per hash partition; every group of ``keys`` lies whole in one call."""
    return [_apply.remote(fn, *parts) for parts in hash_partition(blocks, keys, num_partitions)]
