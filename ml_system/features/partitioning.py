"""Hash partitioning of Ray object blocks by key columns.

Ray Data's groupby sorts the whole dataset and its ``Dataset.join`` matches on
equality only; per-key work that needs whole groups (as-of joins, trailing
windows) only needs co-location. Splitting each block by a stable hash of the
keys with Ray tasks does that in one pass, with nothing routed through the
driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import ray


def partition_ids(df: pd.DataFrame, keys: list[str], num_partitions: int) -> np.ndarray:
    """Stable hash of the keys' string forms: equal values meet in every process, whatever their dtype."""
    normalised = pd.DataFrame({k: df[k].astype("string") for k in keys})
    hashes = pd.util.hash_pandas_object(normalised, index=False).to_numpy()
    return (hashes % np.uint64(num_partitions)).astype(np.int64)


@ray.remote
def _split(block: Any, keys: list[str], num_partitions: int) -> list[pd.DataFrame] | pd.DataFrame:
    if not isinstance(block, pd.DataFrame):
        block = block.to_pandas()
    ids = partition_ids(block, keys, num_partitions)
    parts = [block[ids == p] for p in range(num_partitions)]
    return parts if num_partitions > 1 else parts[0]


def hash_partition(blocks: list[ray.ObjectRef], keys: list[str], num_partitions: int) -> list[list[ray.ObjectRef]]:
    """Return ``parts[p]``: the refs of partition p cut from every block."""
    per_block = []
    for block in blocks:
        refs = _split.options(num_returns=num_partitions).remote(block, keys, num_partitions)
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
