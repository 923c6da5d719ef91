"""The offline store on S3 (moto over HTTP, behind a lock that gives it S3's atomic conditional
put): Delta time travel through the public API with the registry in the same bucket, and several
writers appending to one table at once, without any unsafe-rename option."""

from __future__ import annotations

import multiprocessing as mp
import threading
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import ray
from deltalake import DeltaTable

from ml_system.config import PlatformConfig
from ml_system.errors import ConfigError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from tests.conftest import make_config, s3_options

pytestmark = pytest.mark.usefixtures("ray_cluster")

driver = Entity("driver", ["driver_id"])


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_as_of_pins_delta_versions_on_s3(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    options = s3_options(s3_endpoint)
    config = make_config(
        tmp_path / "mlsys",
        MLSYS_OFFLINE_STORE__URI=f"s3://{s3_bucket}/offline",
        MLSYS_REGISTRY__URI=f"s3://{s3_bucket}/registry",
    )
    config = config.model_copy(
        update={
            "offline_store": config.offline_store.model_copy(update={"storage_options": options}),
            "registry": config.registry.model_copy(update={"storage_options": options}),
        }
    )
    store = FeatureStore(config)
    first = pd.DataFrame(
        {
            "driver_id": [1, 2],
            "event_timestamp": [ts("2024-01-01"), ts("2024-01-01")],
            "created_timestamp": [ts("2024-01-01"), ts("2024-01-01")],
            "rate": [0.1, 0.2],
        }
    )
    assert store.offline.write_pandas("stats", first, mode="overwrite") == 0
    store.apply([driver, FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"), ttl=timedelta(days=2))])
    entity_df = pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [ts("2024-01-02"), ts("2024-01-02")]})
    before = store.get_historical_features(entity_df, ["stats:rate"])
    assert before["rate"].tolist() == [0.1, 0.2]
    assert before.attrs["table_versions"] == {"stats": 0}

    late = first.assign(event_timestamp=ts("2024-01-01 12:00"), created_timestamp=ts("2024-01-03"), rate=[0.5, 0.6])
    assert store.offline.write_pandas("stats", late, mode="append") == 1
    assert store.get_historical_features(entity_df, ["stats:rate"])["rate"].tolist() == [0.5, 0.6]
    again = store.get_historical_features(entity_df, ["stats:rate"], as_of=before.attrs["table_versions"])
    assert again["rate"].tolist() == [0.1, 0.2]
    assert store.freshness("stats").latest_event == ts("2024-01-01 12:00").to_pydatetime()
    assert store.registry.store.latest() == 1  # the registry version lives in the bucket too


# ---- several writers on one table -------------------------------------------------------------


def s3_config(tmp_path: Path, endpoint: str, bucket: str) -> PlatformConfig:
    """The offline store on S3 with credentials only: the commit protocol is the store's default."""
    config = make_config(tmp_path / "mlsys", MLSYS_OFFLINE_STORE__URI=f"s3://{bucket}/offline")
    options = s3_options(endpoint)
    assert not any("UNSAFE" in key for key in options)
    return config.model_copy(
        update={"offline_store": config.offline_store.model_copy(update={"storage_options": options})}
    )


def _append_many(config: PlatformConfig, who: str, count: int, start: mp.synchronize.Barrier) -> None:
    offline = FeatureStore(config).offline
    start.wait()
    for i in range(count):
        offline.write_pandas("events", pd.DataFrame({"who": [who], "i": [i]}), mode="append")


def test_concurrent_appends_to_one_table_on_s3_keep_every_commit(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """Four processes append five times each to a table none of them has created yet."""
    config = s3_config(tmp_path, s3_endpoint, s3_bucket)
    ctx = mp.get_context("spawn")
    writers, count = ("w0", "w1", "w2", "w3"), 5
    barrier = ctx.Barrier(len(writers))
    procs = [ctx.Process(target=_append_many, args=(config, who, count, barrier)) for who in writers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0, f"writer {p.name} failed"

    offline = FeatureStore(config).offline
    table = DeltaTable(offline.table_uri("events"), storage_options=offline.storage_options)
    assert table.version() == len(writers) * count - 1  # one commit per append, none overwritten
    assert len(table.history()) == len(writers) * count
    got = sorted(tuple(r) for r in offline.read_pandas("events")[["who", "i"]].itertuples(index=False))
    assert got == sorted((who, i) for who in writers for i in range(count))


def test_concurrent_cluster_writes_to_one_table_on_s3_keep_every_commit(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """Two drivers' Ray Data jobs (threads here) append to one table at once."""
    offline = FeatureStore(s3_config(tmp_path, s3_endpoint, s3_bucket)).offline

    def rows(who: str, i: int, n: int = 10) -> ray.data.Dataset:
        return ray.data.from_pandas(pd.DataFrame({"who": [who] * n, "i": [i] * n}))

    offline.write_dataset("events", rows("setup", 0, 1), mode="overwrite")
    failures: list[BaseException] = []

    def job(who: str) -> None:
        try:
            for i in range(3):
                offline.write_dataset("events", rows(who, i))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=job, args=(who,)) for who in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    assert failures == []
    assert offline.version("events") == 6
    assert len(offline.read_pandas("events")) == 1 + 2 * 3 * 10


def test_the_unsafe_rename_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        make_config(
            tmp_path,
            MLSYS_OFFLINE_STORE__URI="s3://bucket/offline",
            MLSYS_OFFLINE_STORE__STORAGE_OPTIONS__AWS_S3_ALLOW_UNSAFE_RENAME="true",
        )
