"""Shared fixtures: one Ray cluster for the whole session, private services.

Ray starts once (3-6 s here) with pinned CPUs and object store; every test that
needs Ray shares it. Redis runs as a private ``redis-server`` on a free port so
tests never touch, or depend on, the machine's own instance.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from ml_system.config import PlatformConfig, load_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # address="local": a new cluster of our own, never one that another process on this machine started
    ray.init(address="local", num_cpus=2, object_store_memory=800_000_000, include_dashboard=False, log_to_driver=False)
    yield
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass
    ray.shutdown()


def make_config(home: Path, **overrides: str) -> PlatformConfig:
    environ = {"MLSYS_HOME": str(home), **overrides}
    return load_config(environ=environ)


@pytest.fixture()
def platform_config(tmp_path: Path) -> PlatformConfig:
    return make_config(tmp_path / "mlsys")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed; .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def served_home(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """A small trained platform home (features, 1 trial x 50 rounds, online store at the demo cut-off).

    Built once per session (a few minutes on 2 cores). ``MLSYS_TEST_SERVED_HOME``
    names an already built home to reuse while developing.
    """
    from ml_system.usecases.flights import pipeline

    reuse = os.environ.get("MLSYS_TEST_SERVED_HOME")
    if reuse and (Path(reuse) / "online.db").exists():
        return make_config(Path(reuse))
    config = make_config(tmp_path_factory.mktemp("served") / "mlsys")
    pipeline.build_features(config)
    # one trial: with two, ASHA can stop the best one before its only checkpoint (at the end); see tune_xgb
    pipeline.train(config, num_samples=1, num_boost_round=50)
    pipeline.materialize(config, end=pipeline.DEMO_CUTOFF.to_pydatetime())
    return config
