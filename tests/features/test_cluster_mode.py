"""Cluster mode: the whole loop on two nodes that keep nothing a later step needs on their disks.

Each node of a 2-node ``ray.cluster_utils.Cluster`` gets its own ``MLSYS_HOME`` (through the node's
environment, as two machines would have), and both read ``cluster/mlsys.cluster.yaml`` pointed at
this test's services: the registry, offline store and Tune's checkpoints on S3 (moto's server over
HTTP), MLflow tracking in a fresh PostgreSQL database with its artifacts on S3, the online store in
a private Redis. Features are built and joined, a model is trained and registered, the online store
materialized from the driver; the worker node then reads features online and loads the registered
model with a config of its own. Afterwards both homes are listed: they must be empty.

The scenario runs in a child process (the test process holds the session's cluster), as in
``test_multinode.py``. PostgreSQL comes from ``MLSYS_TEST_POSTGRES_URL`` (default: the local server
on its standard port as ``postgres``; ``scripts/setup.sh`` makes sure it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import s3_options

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "MLSYS_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

SCENARIO = r"""
import json, os, sys
from pathlib import Path

import pandas as pd
import ray
import xgboost as xgb
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

head_env, worker_env = json.loads(sys.argv[1]), json.loads(sys.argv[2])
os.environ.update(head_env)  # the driver runs on the head node

from ml_system.config import load_config
from ml_system.errors import ConfigError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from ml_system.training.trainer import TrainingSet, train_and_register
from ml_system.usecase import TrainingSpec

cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "object_store_memory": 100_000_000, "env_vars": head_env})
worker = cluster.add_node(num_cpus=1, object_store_memory=100_000_000, env_vars=worker_env)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
out = {"nodes": sum(1 for n in ray.nodes() if n["Alive"])}
head_id, worker_id = cluster.head_node.node_id, worker.node_id

def on(node_id):
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)

@ray.remote(num_cpus=0)
def node_home():
    return os.environ["MLSYS_HOME"], load_config().home

out["homes"] = ray.get([node_home.options(scheduling_strategy=on(n)).remote() for n in (head_id, worker_id)])

# 1. build features: a Delta table on S3 written by Ray Data tasks, definitions in the S3 registry
config = load_config()
store = FeatureStore(config)
driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"))
day = pd.Timestamp("2024-01-01", tz="UTC")
frame = pd.DataFrame({
    "driver_id": [k % 40 for k in range(120)],
    "event_timestamp": [day + pd.Timedelta(days=k // 40) for k in range(120)],
    "created_timestamp": [day + pd.Timedelta(days=k // 40) for k in range(120)],
    "rate": [(k % 40) / 40 + (k // 40) / 10 for k in range(120)],
})
store.offline.write_dataset("stats", ray.data.from_pandas([frame.iloc[k::4] for k in range(4)]))
store.apply([driver, stats])

# 2. train + register: a point-in-time training set, Tune with checkpoints on S3, MLflow in PostgreSQL
asked = [day + pd.Timedelta(hours=12)] * 40 + [day + pd.Timedelta(days=2, hours=1)] * 40
entities = pd.DataFrame({"driver_id": list(range(40)) * 2, "event_timestamp": asked})
rows = store.get_historical_features(entities, features=["stats:rate"])
rows = rows.assign(label=rows["rate"] * 3, split=["train", "train", "valid", "test"] * 20)
training_set = TrainingSet(rows, ["rate"], "label", "split", rows.attrs.get("table_versions", {}))
spec = TrainingSpec("reg:squarederror", "mae")
# Tune's checkpoints under this node's home would be out of reach of trials on the other node: refused
on_disk = config.model_copy(update={"ray": config.ray.model_copy(update={"storage_uri": config.home + "/ray_results"})})
try:
    train_and_register(on_disk, training_set, usecase="demo", spec=spec, feature_service="svc",
                       model_name="cluster_mode", num_samples=1, num_boost_round=5, alias=None)
    out["tune_on_disk"] = None
except ConfigError as exc:
    out["tune_on_disk"] = str(exc)
report = train_and_register(
    config, TrainingSet(rows, ["rate"], "label", "split", rows.attrs.get("table_versions", {})), usecase="demo",
    spec=TrainingSpec("reg:squarederror", "mae"), feature_service="svc", model_name="cluster_mode",
    num_samples=2, num_boost_round=12, alias="champion")
out["registered"] = [report.model_name, report.model_version]

# 3. materialize into Redis (Ray Data tasks on both nodes)
end = (day + pd.Timedelta(days=3)).to_pydatetime()
out["written"] = store.materialize(None, end)

# 4 + 5. on the worker node, with that node's own config: read online, load the registered model, score
@ray.remote(num_cpus=0)
def serve_one(driver_ids, now):
    from ml_system.serving.model_deployment import RegisteredBooster

    node_config = load_config()
    got = FeatureStore(node_config).get_online_features(["stats:rate"], [{"driver_id": d} for d in driver_ids], now=now)
    model = RegisteredBooster("cluster_mode", alias="champion")
    scored = model.booster.predict(xgb.DMatrix(pd.DataFrame({"rate": got.values["rate"]})))
    return {"home": node_config.home, "online": got.values["rate"], "version": model.registered.version,
            "columns": model.columns, "predictions": [float(p) for p in scored]}

out["worker"] = ray.get(serve_one.options(scheduling_strategy=on(worker_id)).remote([7, 39], end))
out["expected_online"] = [7 / 40 + 0.2, 39 / 40 + 0.2]
ray.shutdown()
cluster.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database with a random name on the configured server, dropped afterwards."""
    import psycopg
    from psycopg import sql

    server = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    try:
        admin = psycopg.connect(server, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {server} ({' '.join(str(exc).split())}); scripts/setup.sh starts "
            f"the local server, or set {POSTGRES_ENV} to a server where this user may create databases"
        )
    name = f"mlsys_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def cluster_mode_config(bucket: str, endpoint: str, tracking_uri: str, redis_url: str) -> dict[str, object]:
    """``cluster/mlsys.cluster.yaml`` pointed at this test's bucket, moto server, database and Redis."""
    data = yaml.safe_load((ROOT / "cluster" / "mlsys.cluster.yaml").read_text())
    options = s3_options(endpoint)
    for section in ("offline_store", "registry", "pipelines", "ray"):
        key = "storage_uri" if section == "ray" else "uri"
        data[section][key] = data[section][key].replace("s3://ml-system/", f"s3://{bucket}/")
        data[section]["storage_options"] = {**data[section]["storage_options"], **options}
    data["ray"].pop("address")
    data["mlflow"] = {"tracking_uri": tracking_uri, "artifact_location": f"s3://{bucket}/mlflow"}
    data["online_store"]["redis_url"] = redis_url
    return data  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cluster_mode(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, redis_url: str, postgres_url: str
) -> dict[str, object]:
    import boto3
    import psycopg
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/10"  # a database of its own: other tests flush theirs
    redis.Redis.from_url(url).flushdb()
    bucket = f"cluster-mode-{uuid.uuid4().hex[:8]}"
    options = s3_options(s3_endpoint)
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"],
        region_name=options["AWS_REGION"],
    )
    s3.create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("cluster_mode")
    config_file = root / "mlsys.yaml"  # beside the homes, not in them: a node's image or ConfigMap
    config_file.write_text(yaml.safe_dump(cluster_mode_config(bucket, s3_endpoint, postgres_url, url)))
    homes = {"head": root / "head-home", "worker": root / "worker-home"}
    common = {
        "MLSYS_CONFIG": str(config_file),
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        # MLflow's S3 artifacts take boto3's settings from the environment (docs/cluster.md)
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": options["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": options["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": options["AWS_REGION"],
    }
    env = {name: {**common, "MLSYS_HOME": str(home)} for name, home in homes.items()}
    for home in homes.values():
        home.mkdir()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MLSYS_")}
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO, json.dumps(env["head"]), json.dumps(env["worker"])],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=child_env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    result: dict[str, object] = json.loads(lines[-1].removeprefix("RESULT "))
    result["left_in_homes"] = {
        name: sorted(str(p.relative_to(home)) for p in home.rglob("*")) for name, home in homes.items()
    }
    result["homes"] = [[str(homes[n]), str(homes[n])] for n in ("head", "worker")] == result["homes"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    result["s3_keys"] = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    with psycopg.connect(postgres_url) as db:
        result["postgres_versions"] = db.execute("SELECT name, version FROM model_versions").fetchall()
    return result


def test_the_loop_ran_on_two_nodes_each_with_its_own_home(cluster_mode: dict[str, object]) -> None:
    assert cluster_mode["nodes"] == 2
    assert cluster_mode["homes"] is True  # each node's processes saw its own MLSYS_HOME


def test_the_model_trained_on_the_cluster_is_registered_and_features_materialized(
    cluster_mode: dict[str, object],
) -> None:
    assert cluster_mode["registered"] == ["cluster_mode", "1"]
    assert cluster_mode["written"] == {"stats": 40}


def test_tune_checkpoints_on_a_nodes_disk_are_refused_by_name(cluster_mode: dict[str, object]) -> None:
    message = cluster_mode["tune_on_disk"]
    assert isinstance(message, str) and "ray.storage_uri" in message and "2 nodes" in message


def test_the_worker_node_reads_online_features_and_loads_the_registered_model(cluster_mode: dict[str, object]) -> None:
    worker = cluster_mode["worker"]
    assert isinstance(worker, dict)
    assert worker["home"].endswith("worker-home")
    assert worker["online"] == pytest.approx(cluster_mode["expected_online"])
    assert worker["version"] == "1" and worker["columns"] == ["rate"]
    low, high = worker["predictions"]
    assert high > low  # label = 3 x rate: the loaded booster learned it


def test_nothing_a_later_step_needs_was_written_under_either_home(cluster_mode: dict[str, object]) -> None:
    assert cluster_mode["left_in_homes"] == {"head": [], "worker": []}


def test_state_lives_on_s3_and_in_postgresql(cluster_mode: dict[str, object]) -> None:
    keys = cluster_mode["s3_keys"]
    assert isinstance(keys, list)
    assert any(k.startswith("features/stats/_delta_log/") for k in keys)  # offline store
    assert any(k.startswith("registry/") for k in keys)  # feature registry versions
    assert any(k.startswith("ray-results/") and "checkpoint" in k for k in keys)  # Tune's trials
    assert any(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys)  # the registered model's files
    assert cluster_mode["postgres_versions"] == [("cluster_mode", 1)]  # MLflow's registry in PostgreSQL
