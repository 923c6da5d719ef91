"""Online feature lookup latency, in-process: the platform beside the raw client doing the same reads.

    .venv/bin/python benchmarks/online_lookup.py --quick

One view of 10 float features, 100k entities. For each backend (SQLite file,
private ``redis-server`` on a free port) and batch size (1 row, 100 rows):
``OnlineFeatureReader.read`` (keys built, one round trip, values decoded,
a status per value) against the raw client reading the same stored rows
(sqlite3 ``SELECT`` of the packed rows / redis-py ``GET``/``MGET``, values
decoded, no statuses). Runs of 1,000 lookups alternate between the two; the
p50 and p99 reported are medians over runs of each run's own, and
the pooled p99 of all lookups is printed beside them, since on this shared
2-core VM a burst of host noise can hold one run's tail. Redis is measured
twice: reads on the store's own RESP link (the default) and with
``fast_read_link=False`` (redis-py's connection). Prints a table and a last
``RESULT online ...`` line.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import numpy as np
import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ml_system.features import Entity, FeatureView, Field
from ml_system.features.definitions import DeltaSource
from ml_system.features.online import OnlineStore
from ml_system.features.online.codec import LAYOUT_WIDTH
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.sqlite import SqliteOnlineStore
from ml_system.features.store import OnlineFeatureReader
from ml_system.pipelines.local_redis import private_redis

N_ENTITIES = 100_000
N_FEATURES = 10
VIEW = FeatureView(
    "bench",
    [Entity("user", ["user_id"])],
    [Field(f"f{i}") for i in range(N_FEATURES)],
    DeltaSource("bench"),
    ttl=timedelta(days=1),
)


def fill(store: OnlineStore) -> None:
    rng = np.random.default_rng(0)
    now = int(datetime.now(UTC).timestamp() * 1e9)
    values = rng.standard_normal((N_ENTITIES, N_FEATURES)).tolist()
    store.write_batch(VIEW.name, [(str(i), now, now, values[i]) for i in range(N_ENTITIES)], fields=VIEW.feature_names)


def measure(fn: Callable[[list[int]], Any], batches: list[list[int]]) -> list[float]:
    out = []
    for ids in batches:
        start = time.perf_counter_ns()
        fn(ids)
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


ROUND = 1_000  # lookups per run; p99 of a run is its 10th-slowest lookup


def compare(
    platform: Callable[[list[int]], Any], raw: Callable[[list[int]], Any], size: int, lookups: int
) -> tuple[list[list[float]], list[list[float]]]:
    """Alternate runs of ``ROUND`` lookups so drift on a shared machine hits both alike."""
    rng = np.random.default_rng(size)
    mine: list[list[float]] = []
    theirs: list[list[float]] = []
    for fn in (platform, raw):  # warm-up: connections, statement caches
        measure(fn, [rng.integers(0, N_ENTITIES, size).tolist() for _ in range(200)])
    gc.collect()
    gc.disable()
    try:
        for _ in range(max(1, lookups // ROUND)):
            batches = [rng.integers(0, N_ENTITIES, size).tolist() for _ in range(ROUND)]
            mine.append(measure(platform, batches))
            theirs.append(measure(raw, batches))
    finally:
        gc.enable()
    return mine, theirs


def pct(runs: list[list[float]], q: float) -> float:
    """Median over runs of each run's percentile (the medians of several runs)."""
    return float(np.median([np.percentile(run, q) for run in runs]))


def pooled(runs: list[list[float]], q: float) -> float:
    """The percentile of all lookups together: one burst of noise from the host moves it."""
    return float(np.percentile([x for run in runs for x in run], q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k lookups per case instead of 50k")
    args = parser.parse_args()
    lookups = 5_000 if args.quick else 50_000
    results: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    now = datetime.now(UTC)
    unpack = msgpack.unpackb

    with tempfile.TemporaryDirectory() as tmp:
        sqlite_store = SqliteOnlineStore(os.path.join(tmp, "online.db"))
        fill(sqlite_store)
        reader = OnlineFeatureReader(sqlite_store, {VIEW.name: VIEW}, [f"bench:f{i}" for i in range(N_FEATURES)])
        conn = sqlite3.connect(os.path.join(tmp, "online.db"), isolation_level=None)

        def raw_sqlite(ids: list[int]) -> Any:
            keys = [str(i) for i in ids]
            if len(keys) == 1:
                row = conn.execute("SELECT payload FROM fv_bench WHERE entity_key = ?", keys).fetchone()
                return unpack(row[0][LAYOUT_WIDTH:])
            marks = ",".join("?" * len(keys))
            return [
                unpack(p[LAYOUT_WIDTH:])
                for (p,) in conn.execute(f"SELECT payload FROM fv_bench WHERE entity_key IN ({marks})", keys)
            ]

        for size in (1, 100):
            results[("sqlite", size)] = compare(
                lambda ids: reader.read([{"user_id": i} for i in ids], now), raw_sqlite, size, lookups
            )
        conn.close()
        sqlite_store.close()

        with private_redis() as url:
            redis_store = RedisOnlineStore(url)
            fill(redis_store)
            client = redis.Redis.from_url(url)
            skip = 40 + LAYOUT_WIDTH

            def raw_redis(ids: list[int]) -> Any:
                if len(ids) == 1:
                    return unpack(client.get(f"mlsys:bench:{ids[0]}")[skip:])
                return [unpack(v[skip:]) for v in client.mget([f"mlsys:bench:{i}" for i in ids])]

            # the platform's reads on its own RESP link (the default), then on redis-py's connection
            for link, fast in (("redis", True), ("redis-py", False)):
                store = redis_store if fast else RedisOnlineStore(url, fast_read_link=False)
                reader = OnlineFeatureReader(store, {VIEW.name: VIEW}, [f"bench:f{i}" for i in range(N_FEATURES)])
                for size in (1, 100):
                    results[(link, size)] = compare(
                        lambda ids, reader=reader: reader.read([{"user_id": i} for i in ids], now),
                        raw_redis,
                        size,
                        lookups,
                    )
                store.close()
            client.close()

    print(
        f"online lookup, {N_FEATURES} features per row, {N_ENTITIES:,} entities, {lookups:,} lookups per case "
        f"in runs of {ROUND:,} (ms; p50/p99: median over runs; pooled: p99 of all lookups together)"
    )
    print(
        f"{'backend':<8} {'rows':>5} {'platform p50':>13} {'p99':>8} {'pooled':>8} "
        f"{'raw p50':>9} {'p99':>8} {'pooled':>8} {'p99 ratio':>10}"
    )
    for (backend, size), (mine, raw) in results.items():
        print(
            f"{backend:<8} {size:>5} {pct(mine, 50):13.3f} {pct(mine, 99):8.3f} {pooled(mine, 99):8.3f} "
            f"{pct(raw, 50):9.3f} {pct(raw, 99):8.3f} {pooled(raw, 99):8.3f} {pct(mine, 99) / pct(raw, 99):10.2f}"
        )
    print(
        f"RESULT online redis_p99_ms={pct(results[('redis', 1)][0], 99):.3f} "
        f"redis_100_p99_ms={pct(results[('redis', 100)][0], 99):.3f} "
        f"sqlite_p99_ms={pct(results[('sqlite', 1)][0], 99):.3f} "
        f"sqlite_100_p99_ms={pct(results[('sqlite', 100)][0], 99):.3f} "
        f"ratio_vs_raw_redis_p99={pct(results[('redis', 1)][0], 99) / pct(results[('redis', 1)][1], 99):.2f} "
        f"redis_p99_pooled_ms={pooled(results[('redis', 1)][0], 99):.3f} "
        f"redis_100_p99_pooled_ms={pooled(results[('redis', 100)][0], 99):.3f} "
        f"redis_py_link_p99_ms={pct(results[('redis-py', 1)][0], 99):.3f} "
        f"redis_py_link_100_p99_ms={pct(results[('redis-py', 100)][0], 99):.3f}"
    )


if __name__ == "__main__":
    main()
