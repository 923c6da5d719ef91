"""Where Tune keeps trials: ``ray.storage_uri``, local by default, S3 for a cluster (checked against moto)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyarrow import fs

from ml_system.config import load_config
from ml_system.training.tune_storage import tune_storage
from tests.conftest import s3_options


def test_the_default_is_under_home_and_counts_as_one_nodes_disk(tmp_path: Path) -> None:
    config = load_config(environ={"MLSYS_HOME": str(tmp_path)})
    assert config.ray.storage_uri == str(tmp_path / "ray_results")
    assert tune_storage(config.ray) == (str(tmp_path / "ray_results"), None)
    assert config.node_local_locations(["ray_storage"]) == [f"ray.storage_uri {tmp_path / 'ray_results'}"]
    shared = load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_RAY__SHARED_PATHS": str(tmp_path)})
    assert shared.node_local_locations(["ray_storage"]) == []


def test_an_s3_location_is_nobodys_disk_and_takes_env_overrides(tmp_path: Path) -> None:
    config = load_config(
        environ={
            "MLSYS_HOME": str(tmp_path),
            "MLSYS_RAY__STORAGE_URI": "s3://bucket/tune/",
            "MLSYS_RAY__STORAGE_OPTIONS__AWS_REGION": "eu-west-1",
        }
    )
    assert config.ray.storage_options == {"AWS_REGION": "eu-west-1"}
    assert config.node_local_locations(["ray_storage"]) == []
    path, filesystem = tune_storage(config.ray)
    assert path == "bucket/tune" and isinstance(filesystem, fs.S3FileSystem)
    assert filesystem.region == "eu-west-1"


@pytest.mark.integration
def test_the_s3_filesystem_reaches_the_endpoint_of_the_storage_options(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    options = {f"MLSYS_RAY__STORAGE_OPTIONS__{k}": v for k, v in s3_options(s3_endpoint).items()}
    config = load_config(
        environ={"MLSYS_HOME": str(tmp_path), "MLSYS_RAY__STORAGE_URI": f"s3://{s3_bucket}/tune", **options}
    )
    path, filesystem = tune_storage(config.ray)
    assert filesystem is not None
    with filesystem.open_output_stream(f"{path}/trial/checkpoint.txt") as out:
        out.write(b"boosted 10 rounds")
    with filesystem.open_input_stream(f"{path}/trial/checkpoint.txt") as back:
        assert back.read() == b"boosted 10 rounds"
    assert not (tmp_path / "ray_results").exists()
