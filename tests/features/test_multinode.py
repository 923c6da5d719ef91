"""On a cluster of two nodes, state on one node's disk is refused before anything is written,
and the same work runs once the stores are ones every node reaches.

A ``ray.cluster_utils.Cluster`` cannot join this test process, which holds the session's cluster,
so the scenario runs in a child process that starts a head and a worker node and reports back as
JSON. Both nodes share this machine's disk, which is exactly what makes node-local paths dangerous:
nothing fails, the nodes just keep diverging copies on a real cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCENARIO = r"""
import json, sys
from pathlib import Path

import pandas as pd
import ray
from ray.cluster_utils import Cluster

from ml_system.config import load_config
from ml_system.errors import ConfigError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from ml_system.training.trainer import TrainingSet, train_and_register
from ml_system.usecase import TrainingSpec

home, redis_url = Path(sys.argv[1]), sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100_000_000})
cluster.add_node(num_cpus=1, object_store_memory=100_000_000)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
out = {"nodes": sum(1 for n in ray.nodes() if n["Alive"])}

driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"))
stamp = pd.Timestamp("2024-01-01", tz="UTC")
frame = pd.DataFrame({"driver_id": range(40), "event_timestamp": [stamp] * 40, "created_timestamp": [stamp] * 40,
                      "rate": [k / 100 for k in range(40)]})
end = pd.Timestamp("2024-01-02", tz="UTC").to_pydatetime()

def refused(call):
    try:
        call()
    except ConfigError as exc:
        return str(exc)
    return None

# the embedded defaults: everything under a local home, SQLite online
local = FeatureStore(load_config(environ={"MLSYS_HOME": str(home / "local")}))
out["write_dataset"] = refused(lambda: local.offline.write_dataset("stats", ray.data.from_pandas(frame)))
out["apply"] = refused(lambda: local.apply([driver, stats]))
out["materialize"] = refused(lambda: local.materialize(None, end))
out["incremental"] = refused(lambda: local.materialize_incremental(end))
out["snapshot"] = refused(lambda: local.load_snapshot(end))
rows = frame.assign(label=frame["rate"] * 2, split=["train", "valid", "test", "train"] * 10)
out["train"] = refused(lambda: train_and_register(
    local.config, TrainingSet(rows, ["rate"], "label", "split", {}), usecase="demo",
    spec=TrainingSpec("reg:squarederror", "mae"), feature_service="svc", model_name="m",
    num_samples=1, num_boost_round=5, alias=None))
out["files_left"] = sorted(str(p.relative_to(home)) for p in (home / "local").rglob("*"))

# the same work with every location on a mount listed as shared and the online store in Redis
shared = FeatureStore(load_config(environ={
    "MLSYS_HOME": str(home / "shared"), "MLSYS_RAY__SHARED_PATHS": str(home),
    "MLSYS_ONLINE_STORE__TYPE": "redis", "MLSYS_ONLINE_STORE__REDIS_URL": redis_url}))
shared.offline.write_dataset("stats", ray.data.from_pandas([frame.iloc[k::4] for k in range(4)]), mode="overwrite")
shared.apply([driver, stats])
out["written"] = shared.materialize(None, end)
got = shared.get_online_features(["stats:rate"], [{"driver_id": 7}, {"driver_id": 39}], now=end)
out["online"] = got.values["rate"]
print("RESULT " + json.dumps(out))
ray.shutdown()
cluster.shutdown()
"""


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict[str, object]:
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/9"  # a database of its own: other tests flush theirs
    redis.Redis.from_url(url).flushdb()
    home = tmp_path_factory.mktemp("two_nodes")
    proc = subprocess.run([sys.executable, "-c", SCENARIO, str(home), url], capture_output=True, text=True, timeout=420)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))  # type: ignore[no-any-return]


def test_the_scenario_ran_on_two_alive_nodes(two_nodes: dict[str, object]) -> None:
    assert two_nodes["nodes"] == 2


@pytest.mark.parametrize(
    ("step", "named"),
    [
        ("write_dataset", "offline_store.uri"),
        ("apply", "registry.uri"),
        ("materialize", "online_store (sqlite)"),
        ("incremental", "online_store (sqlite)"),
        ("snapshot", "online_store (sqlite)"),
        ("train", "mlflow.artifact_location"),
    ],
)
def test_node_local_state_is_refused_by_name_on_two_nodes(two_nodes: dict[str, object], step: str, named: str) -> None:
    message = two_nodes[step]
    assert isinstance(message, str), f"{step} ran on a 2-node cluster with node-local state"
    assert named in message and "2 nodes" in message and "ray.shared_paths" in message


def test_nothing_is_written_before_the_refusal(two_nodes: dict[str, object]) -> None:
    assert two_nodes["files_left"] == []  # no Delta files, no registry version, no online.db, no MLflow db


def test_shared_paths_and_redis_run_the_same_work_on_two_nodes(two_nodes: dict[str, object]) -> None:
    assert two_nodes["written"] == {"stats": 40}
    assert two_nodes["online"] == [0.07, 0.39]
