"""The distributed PIT join against references: brute force (both modes) and DuckDB's ASOF LEFT JOIN.

Inputs are cut into several blocks in the object store and joined with a
random partition count, so hashing, the time-range filter, block order ("later
write" wins a tie) and the per-partition search are all exercised on the
shared Ray cluster.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_system.features.partitioning import KeyKind, key_kind, partition_ids
from ml_system.features.pit_join import JOIN_TASK_OPTIONS, JoinSpec, asof_join, join_blocks, join_pandas
from tests.features.pit_reference import brute_force

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

BASE = pd.Timestamp("2024-01-01", tz="UTC")
HOUR_NS = 3_600_000_000_000


def as_list(values: pd.Series) -> list[float | None]:
    return [None if pd.isna(v) else float(v) for v in values]


def put_blocks(df: pd.DataFrame, n_blocks: int) -> list[ray.ObjectRef]:
    bounds = np.linspace(0, len(df), n_blocks + 1).astype(int)
    return [ray.put(df.iloc[bounds[i] : bounds[i + 1]].reset_index(drop=True)) for i in range(n_blocks)]


feature_rows = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["a", "b"]), st.integers(0, 20), st.integers(0, 30)), max_size=40
)
entity_rows = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "c"]), st.integers(0, 30)), min_size=1, max_size=25
)


def frames(feats: list[tuple[int, str, int, int]], ents: list[tuple[int, str, int]]) -> tuple[pd.DataFrame, ...]:
    right = pd.DataFrame(
        {
            "k": np.array([f[0] for f in feats], dtype="int64"),
            "city": pd.array([f[1] for f in feats], dtype="str"),
            "ts": pd.to_datetime([BASE + pd.Timedelta(hours=f[2]) for f in feats], utc=True),
            # created may precede the event (a forecast) or follow it by hours (a late correction)
            "created": pd.to_datetime([BASE + pd.Timedelta(hours=f[3]) for f in feats], utc=True),
            "v": np.arange(len(feats), dtype="float64"),
        }
    )
    left = pd.DataFrame(
        {
            "k": np.array([e[0] for e in ents], dtype="int32"),  # a narrower dtype than the feature side
            "city": pd.array([e[1] for e in ents], dtype="str"),
            "event_timestamp": pd.to_datetime([BASE + pd.Timedelta(hours=e[2]) for e in ents], utc=True),
        }
    )
    return left, right


def kinds_for(keys: list[str], left: pd.DataFrame, right: pd.DataFrame) -> dict[tuple[str, ...], tuple[KeyKind, ...]]:
    from ml_system.features.partitioning import common_kinds

    agreed = common_kinds([key_kind(left[k].dtype) for k in keys], [key_kind(right[k].dtype) for k in keys])
    return {tuple(keys): agreed}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feats=feature_rows,
    ents=entity_rows,
    ttl_hours=st.one_of(st.none(), st.integers(1, 10)),
    bitemporal=st.booleans(),
    composite=st.booleans(),
    n_blocks=st.integers(1, 3),
    n_parts=st.integers(1, 4),
)
def test_distributed_join_matches_brute_force(feats, ents, ttl_hours, bitemporal, composite, n_blocks, n_parts) -> None:
    left, right = frames(feats, ents)
    keys = ["k", "city"] if composite else ["k"]
    ttl = None if ttl_hours is None else timedelta(hours=ttl_hours)
    spec = JoinSpec(tuple(keys), ("v",), "ts", "created", ttl)
    want = brute_force(left, right, keys, ttl, bitemporal)
    views = [(spec, put_blocks(right, n_blocks))]

    got = join_pandas(left, views, kinds_for(keys, left, right), "event_timestamp", n_parts, bitemporal)
    assert as_list(got["v"]) == want
    assert got["k"].tolist() == left["k"].tolist()  # entity rows keep their order and columns

    # entity rows already on the cluster: the output comes back as blocks, in partition order
    ent = left.assign(row=np.arange(len(left)))
    refs = join_blocks(put_blocks(ent, 2), views, kinds_for(keys, left, right), "event_timestamp", n_parts, bitemporal)
    blocks = pd.concat(ray.get(refs), ignore_index=True).sort_values("row")
    assert as_list(blocks["v"]) == want

    # the single-partition function gives the same answer
    assert as_list(asof_join(left, right, spec, "event_timestamp", bitemporal)["v"]) == want


def test_bitemporal_hides_a_correction_written_after_t() -> None:
    """A value for 01:00 corrected at 05:00: training rows before 05:00 see the original."""
    right = pd.DataFrame(
        {
            "k": [1, 1, 1],
            "ts": pd.to_datetime([BASE, BASE + pd.Timedelta(hours=1), BASE + pd.Timedelta(hours=1)], utc=True),
            "created": pd.to_datetime([BASE, BASE + pd.Timedelta(hours=1), BASE + pd.Timedelta(hours=5)], utc=True),
            "v": [10.0, 11.0, 99.0],
        }
    )
    left = pd.DataFrame(
        {"k": [1, 1, 1], "event_timestamp": pd.to_datetime([BASE + pd.Timedelta(hours=h) for h in (2, 5, 0)], utc=True)}
    )
    spec = JoinSpec(("k",), ("v",), "ts", "created", None)
    kinds = kinds_for(["k"], left, right)
    plain = join_pandas(left, [(spec, [ray.put(right)])], kinds, "event_timestamp", 2)
    assert plain["v"].tolist() == [99.0, 99.0, 10.0]  # the correction leaks into the 02:00 row
    bitemporal = join_pandas(left, [(spec, [ray.put(right)])], kinds, "event_timestamp", 2, bitemporal=True)
    assert bitemporal["v"].tolist() == [11.0, 99.0, 10.0]


def test_backfill_written_later_is_invisible_even_when_it_is_the_only_row() -> None:
    right = pd.DataFrame(
        {
            "k": [7],
            "ts": pd.to_datetime([BASE], utc=True),
            "created": pd.to_datetime([BASE + pd.Timedelta(days=30)], utc=True),
            "v": [1.0],
        }
    )
    left = pd.DataFrame({"k": [7], "event_timestamp": pd.to_datetime([BASE + pd.Timedelta(days=1)], utc=True)})
    spec = JoinSpec(("k",), ("v",), "ts", "created", None)
    got = join_pandas(left, [(spec, [ray.put(right)])], kinds_for(["k"], left, right), "event_timestamp", 1, True)
    assert pd.isna(got["v"].iloc[0])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), ttl_hours=st.one_of(st.none(), st.integers(1, 48)))
def test_distributed_join_matches_duckdb_asof(seed: int, ttl_hours: int | None) -> None:
    """Thousands of rows with many exact-time ties, against DuckDB's own as-of join."""
    rng = np.random.default_rng(seed)
    n_right, n_left, n_keys = 5_000, 3_000, 50
    right_ns = BASE.value + rng.integers(0, 200, n_right) * HOUR_NS
    right = pd.DataFrame(
        {
            "k": rng.integers(0, n_keys, n_right),
            "ts": pd.to_datetime(right_ns, utc=True),
            "created": pd.to_datetime(right_ns + rng.integers(0, 3, n_right) * HOUR_NS, utc=True),
            "v": rng.standard_normal(n_right),
        }
    )
    left = pd.DataFrame(
        {
            "k": rng.integers(0, n_keys + 5, n_left),
            "event_timestamp": pd.to_datetime(BASE.value + rng.integers(-10, 220, n_left) * HOUR_NS, utc=True),
        }
    )
    ttl = None if ttl_hours is None else timedelta(hours=ttl_hours)
    spec = JoinSpec(("k",), ("v",), "ts", "created", ttl)
    got = join_pandas(left, [(spec, put_blocks(right, 3))], kinds_for(["k"], left, right), "event_timestamp", 3)

    con = duckdb.connect()
    con.register(
        "r",
        pd.DataFrame(
            {"k": right["k"], "ts": right["ts"].array.asi8, "created": right["created"].array.asi8, "v": right["v"]}
        ).assign(pos=np.arange(n_right)),
    )
    con.register("l", pd.DataFrame({"k": left["k"], "t": left["event_timestamp"].array.asi8, "row": np.arange(n_left)}))
    ttl_ns = "NULL" if ttl is None else str(ttl_hours * HOUR_NS)
    want = con.execute(
        f"""
        WITH latest AS (  -- DuckDB breaks exact ties arbitrarily, so settle them first as the documented semantics say
            SELECT * FROM r QUALIFY row_number() OVER (PARTITION BY k, ts ORDER BY created DESC, pos DESC) = 1
        )
        SELECT l.row, CASE WHEN {ttl_ns} IS NULL OR latest.ts > l.t - {ttl_ns} THEN latest.v END AS v
        FROM l ASOF LEFT JOIN latest ON l.k = latest.k AND l.t >= latest.ts
        ORDER BY l.row
        """
    ).df()
    con.close()
    assert got["v"].isna().sum() == want["v"].isna().sum()
    np.testing.assert_array_equal(got["v"].to_numpy(), want["v"].to_numpy())


def test_equal_keys_of_different_dtypes_land_in_the_same_partition() -> None:
    ints = pd.DataFrame({"k": np.arange(1000, dtype="int64")})
    narrow = pd.DataFrame({"k": np.arange(1000, dtype="int32")})
    assert (partition_ids(ints, ["k"], 7) == partition_ids(narrow, ["k"], 7)).all()
    words = [f"id-{i}" for i in range(1000)]
    arrow = pd.DataFrame({"k": pd.array(words, dtype="str")})
    python = pd.DataFrame({"k": np.array(words, dtype=object)})
    assert (partition_ids(arrow, ["k"], 7) == partition_ids(python, ["k"], 7)).all()
    spread = np.bincount(partition_ids(ints, ["k"], 7), minlength=7)
    assert spread.min() > 100  # consecutive ids spread over every partition
    # int against string keys hash through their string forms on both sides
    mixed = partition_ids(ints, ["k"], 7, ["any"])
    assert (mixed == partition_ids(pd.DataFrame({"k": [str(i) for i in range(1000)]}), ["k"], 7, ["any"])).all()


@ray.remote
def _polars_threads() -> tuple[int, int]:
    import os

    import polars as pl

    return pl.thread_pool_size(), len(os.sched_getaffinity(0))


def test_join_tasks_use_only_the_cpu_they_reserve() -> None:
    """Polars starts a thread per machine core unless told; the join's tasks reserve one CPU and must use one.

    Without the pin, one node offering Ray a single CPU ran the join as fast as
    two CPUs did: the tasks were using every core behind the scheduler's back.
    """
    pinned, cores = ray.get(_polars_threads.options(**JOIN_TASK_OPTIONS).remote())
    assert JOIN_TASK_OPTIONS["num_cpus"] == 1 and pinned == 1
    unpinned, _ = ray.get(_polars_threads.remote())
    if cores > 1:  # what a task gets by default: a thread per core, so the pin is what makes the difference
        assert unpinned > 1
