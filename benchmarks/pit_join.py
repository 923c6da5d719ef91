"""Point-in-time join throughput: the platform on Ray against DuckDB and pandas.

    .venv/bin/python benchmarks/pit_join.py --quick   # 2M entity rows x 2M feature rows, 10k keys
    .venv/bin/python benchmarks/pit_join.py           # 20M x 20M

Phase 1, one node with every CPU: DuckDB ``ASOF LEFT JOIN`` (threads = CPUs,
result fetched as Arrow), pandas ``merge_asof`` (sorting included: the inputs
arrive unsorted) and the platform's ``join_pandas`` (pandas entity frame in,
pandas frame out, feature table already in the object store as blocks, as after
the Delta read), alternating, median of ``--runs``. The platform's answer is
checked against DuckDB's on the first run. The platform also settles exact
timestamp ties by ``created_timestamp``, which the baselines skip.

Phase 2, scale-out: the same join on ``ray.cluster_utils.Cluster`` — one node
with 1 CPU, then two nodes with 1 CPU each. Feature blocks are made by tasks
spread over the nodes (as a table read lands), the entity frame sits on the
driver (head node), so partitions cross the node boundary through Ray's object
transfer. Honest caveat: the nodes are processes on one 2-core machine, so
"two nodes" doubles the cores the join may use while the driver shares them;
the comparison shows that adding a node adds throughput and what the shuffle
costs, not what two separate machines would reach.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import ray

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ml_system.features.pit_join import JoinSpec, join_pandas

YEAR_NS = 365 * 24 * 3_600_000_000_000
START_NS = pd.Timestamp("2024-01-01", tz="UTC").value
SPEC = JoinSpec(("k",), ("v",), "event_timestamp", "created_timestamp", None)
KINDS: dict[tuple[str, ...], Any] = {("k",): ("int",)}


def make_features(seed: int, rows: int, keys: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = START_NS + rng.integers(0, YEAR_NS, rows)
    return pd.DataFrame(
        {
            "k": rng.integers(0, keys, rows),
            "event_timestamp": pd.DatetimeIndex(ts.view("datetime64[ns]"), tz="UTC"),
            "created_timestamp": pd.DatetimeIndex(
                (ts + rng.integers(0, 3_600_000_000_000, rows)).view("datetime64[ns]"), tz="UTC"
            ),
            "v": rng.standard_normal(rows),
        }
    )


def make_entities(seed: int, rows: int, keys: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = START_NS + rng.integers(0, YEAR_NS, rows)
    return pd.DataFrame(
        {"k": rng.integers(0, keys, rows), "event_timestamp": pd.DatetimeIndex(ts.view("datetime64[ns]"), tz="UTC")}
    )


@ray.remote
def _feature_block(seed: int, rows: int, keys: int) -> pd.DataFrame:
    return make_features(seed, rows, keys)


def feature_blocks(rows: int, keys: int, n_blocks: int) -> list[ray.ObjectRef]:
    """Blocks made where they land, spread over the nodes like a table read."""
    sizes = np.diff(np.linspace(0, rows, n_blocks + 1).astype(int))
    return [
        _feature_block.options(scheduling_strategy="SPREAD").remote(1000 + i, int(n), keys) for i, n in enumerate(sizes)
    ]


def run_duckdb(entities: pd.DataFrame, features: pd.DataFrame) -> Any:
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    con.register("e", entities)
    con.register("f", features)
    out = con.sql(
        "SELECT e.k, e.event_timestamp, f.v FROM e ASOF LEFT JOIN f "
        "ON e.k = f.k AND e.event_timestamp >= f.event_timestamp"
    ).to_arrow_table()
    con.close()
    return out


def run_pandas(entities: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    left = entities.sort_values("event_timestamp")
    right = features[["k", "event_timestamp", "v"]].sort_values("event_timestamp")
    return pd.merge_asof(left, right, on="event_timestamp", by="k", direction="backward")


def run_project(entities: pd.DataFrame, blocks: list[ray.ObjectRef], bitemporal: bool = False) -> pd.DataFrame:
    return join_pandas(entities, [(SPEC, blocks)], KINDS, "event_timestamp", bitemporal=bitemporal)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def check_against_duckdb(project: pd.DataFrame, duck: Any) -> None:
    """Same values per entity row: DuckDB's order is its own, so compare after sorting by (k, t)."""
    want = duck.to_pandas().sort_values(["k", "event_timestamp"], kind="stable")
    got = project.sort_values(["k", "event_timestamp"], kind="stable")
    a, b = got["v"].to_numpy(dtype="float64"), want["v"].to_numpy(dtype="float64")
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.allclose(a[~np.isnan(a)], b[~np.isnan(b)]):
        raise SystemExit("platform and DuckDB disagree: benchmark aborted")


def phase_one(n_entity: int, n_feature: int, keys: int, runs: int, store_bytes: int) -> dict[str, list[float]]:
    ray.init(num_cpus=os.cpu_count(), object_store_memory=store_bytes, include_dashboard=False, log_to_driver=False)
    try:
        blocks = feature_blocks(n_feature, keys, max(4, n_feature // 1_000_000))
        ray.wait(blocks, num_returns=len(blocks))
        features = pd.concat(ray.get(blocks), ignore_index=True)
        entities = make_entities(7, n_entity, keys)
        run_project(entities.head(1000), blocks)  # start the join's workers: a cluster pays that once
        times: dict[str, list[float]] = {"duckdb": [], "pandas": [], "project": [], "project_bitemporal": []}
        for run in range(runs):
            order = ["duckdb", "pandas", "project", "project_bitemporal"]
            if run % 2:
                order.reverse()
            for name in order:
                if name == "duckdb":
                    secs, out = timed(lambda: run_duckdb(entities, features))
                    duck = out if run == 0 else None
                elif name == "pandas":
                    secs, out = timed(lambda: run_pandas(entities, features))
                elif name == "project":
                    secs, out = timed(lambda: run_project(entities, blocks))
                    mine = out if run == 0 else None
                else:
                    secs, out = timed(lambda: run_project(entities, blocks, bitemporal=True))
                times[name].append(secs)
                del out
                print(f"  run {run + 1}/{runs} {name:<20} {secs:7.2f} s", flush=True)
            if run == 0:
                check_against_duckdb(mine, duck)
                del mine, duck
        return times
    finally:
        ray.shutdown()


def phase_two(n_entity: int, n_feature: int, keys: int, runs: int, store_bytes: int, nodes: int) -> list[float]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": store_bytes, "include_dashboard": False},
    )
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=store_bytes)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        blocks = feature_blocks(n_feature, keys, max(4, n_feature // 1_000_000))
        ray.wait(blocks, num_returns=len(blocks))
        entities = make_entities(7, n_entity, keys)
        run_project(entities, blocks)  # warm the workers on every node
        times = []
        for run in range(runs):
            secs, out = timed(lambda: run_project(entities, blocks))
            del out
            times.append(secs)
            print(f"  run {run + 1}/{runs} {nodes} node(s) x 1 CPU   {secs:7.2f} s", flush=True)
        return times
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2M x 2M rows instead of 20M x 20M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-cluster", action="store_true", help="skip the scale-out phase")
    args = parser.parse_args()
    n = 2_000_000 if args.quick else 20_000_000
    keys = 10_000
    store_bytes = (1 if args.quick else 4) * 1_000_000_000
    print(
        f"PIT join: {n:,} entity rows x {n:,} feature rows over {keys:,} keys, {os.cpu_count()} CPUs, {args.runs} runs"
    )

    print("phase 1: one node, all CPUs")
    one = phase_one(n, n, keys, args.runs, store_bytes)
    scale: dict[int, list[float]] = {}
    if not args.no_cluster:
        for nodes in (1, 2):
            print(f"phase 2: {nodes} node(s) x 1 CPU (ray.cluster_utils.Cluster)")
            scale[nodes] = phase_two(n, n, keys, args.runs, store_bytes, nodes)

    def rate(secs: list[float]) -> float:
        return n / statistics.median(secs)

    rows = [
        ("DuckDB ASOF LEFT JOIN", one["duckdb"]),
        ("pandas merge_asof", one["pandas"]),
        ("platform, 1 node x all CPUs", one["project"]),
        ("platform bitemporal, 1 node", one["project_bitemporal"]),
        *((f"platform, {k} node(s) x 1 CPU", v) for k, v in scale.items()),
    ]
    print()
    print(f"{'engine':<32} {'median s':>9} {'min s':>7} {'rows/s':>12} {'vs DuckDB':>10}")
    for name, secs in rows:
        print(
            f"{name:<32} {statistics.median(secs):9.2f} {min(secs):7.2f} {rate(secs):12,.0f} "
            f"{rate(secs) / rate(one['duckdb']):10.2f}"
        )
    result = (
        f"RESULT pit rows_per_s={rate(one['project']):.0f} "
        f"ratio_vs_duckdb={rate(one['project']) / rate(one['duckdb']):.2f} "
        f"ratio_vs_pandas={rate(one['project']) / rate(one['pandas']):.2f} "
        f"bitemporal_rows_per_s={rate(one['project_bitemporal']):.0f}"
    )
    if scale:
        result += (
            f" one_node_1cpu_rows_per_s={rate(scale[1]):.0f} two_nodes_1cpu_rows_per_s={rate(scale[2]):.0f}"
            f" ratio_two_vs_one_node={rate(scale[2]) / rate(scale[1]):.2f}"
        )
    print(result)


if __name__ == "__main__":
    main()
