"""Shared fixtures: one Ray cluster for the whole session, private services.

Ray starts once (3-6 s here) with pinned CPUs and object store; every test that
needs Ray shares it. Redis runs as a private ``redis-server`` on a free port so
tests never touch, or depend on, the machine's own instance.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray

from ml_system.config import PlatformConfig, load_config
from ml_system.pipelines import steps
from ml_system.serving.deploy import free_port
from ml_system.training.trainer import TrainReport
from ml_system.usecase import load_usecase
from ml_system.usecases.flights.demo import DEMO_CUTOFF


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, seconds: float) -> None:
    """Block until a private server accepts connections; fail the session if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what} did not start on port {port}")


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of one test's own, which it may stop (SIGSTOP) or kill without touching others'."""
    server = shutil.which("redis-server")
    assert server is not None, "redis-server is needed"
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, "redis-server", 10)
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The session's cluster; yields the dashboard (job submission) address."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    dashboard_port = free_port()
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=800_000_000,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    yield f"http://127.0.0.1:{dashboard_port}"
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass
    ray.shutdown()


def make_config(home: Path, **overrides: str) -> PlatformConfig:
    environ = {"MLSYS_HOME": str(home), **overrides}
    return load_config(environ=environ)


def online_backend(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Config overrides that put a test's online store on ``backend`` ("sqlite" or "redis", emptied first)."""
    if backend == "sqlite":
        return {}
    import redis

    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return {"MLSYS_ONLINE_STORE__TYPE": "redis", "MLSYS_ONLINE_STORE__REDIS_URL": url}


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
    wait_for_port(port, proc, "redis-server", 10)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def serve_port(ray_cluster: str) -> int:
    """Serve's HTTP proxy is one per cluster: started once, on a free port, for every app in the session."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client()
    except Exception:  # noqa: BLE001 - not started yet
        client = None
    if client is None:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        client = _get_global_client()
    return int(ray.get(client._controller.get_http_config.remote()).port)


# ---- a small but real flight-delay platform, built once per session -------------------------
# Raw data and trailing rates in Delta, a registry, a model tuned with Ray Tune and registered in
# MLflow, an online store materialized to the demo cut-off, and (on demand) the Serve app.


@dataclass
class FlightsPlatform:
    config: PlatformConfig
    report: TrainReport
    written: dict[str, int]


@pytest.fixture(scope="session")
def flights_platform(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> FlightsPlatform:
    home: Path = tmp_path_factory.mktemp("flights") / "mlsys"
    config = make_config(home)
    flights = load_usecase("flights")
    steps.build_features(config, flights)
    report = steps.train(config, flights, num_samples=2, num_boost_round=60)
    written = steps.materialize(config, end=DEMO_CUTOFF.to_pydatetime())
    return FlightsPlatform(config=config, report=report, written=written)


@pytest.fixture(scope="session")
def flights_url(flights_platform: FlightsPlatform, serve_port: int) -> Iterator[str]:
    from ray import serve

    from ml_system.serving.app import AppArgs, build_app
    from ml_system.serving.deploy import run_app

    serving = flights_platform.config.serving.model_copy(update={"port": serve_port})
    app = build_app(AppArgs(usecase="flights", home=flights_platform.config.home, max_rows=50))
    url = run_app(app, "flight_delay_test", serving, route_prefix="/flights")
    yield url
    serve.delete("flight_delay_test")


# moto's server checks ``If-None-Match`` and then stores the object without a lock, so two
# concurrent conditional puts can both succeed there, which real S3 decides atomically. The
# server below is moto's own app behind a lock around each request: real HTTP, S3's atomicity.
_MOTO_SERVER = """
import sys, threading
from werkzeug.serving import run_simple
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))

run_simple("127.0.0.1", int(sys.argv[1]), serialized, threaded=True, request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A private moto S3 server over HTTP; returns its endpoint URL."""
    import sys

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SERVER, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, proc, "moto S3 server", 20)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def s3_options(endpoint: str) -> dict[str, str]:
    """deltalake-style storage options for the moto server (any credentials are accepted)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }


@pytest.fixture()
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    name = f"{name}-{time.monotonic_ns() % 10**9}"
    opts = s3_options(s3_endpoint)
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=opts["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=opts["AWS_SECRET_ACCESS_KEY"],
        region_name=opts["AWS_REGION"],
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def served_home(
    ray_cluster: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> PlatformConfig:
    """A copy of the session's flight platform for serving tests, which materialize and redeploy freely.

    ``MLSYS_TEST_SERVED_HOME`` names an already built home to reuse while developing.
    """
    reuse = os.environ.get("MLSYS_TEST_SERVED_HOME")
    if reuse and (Path(reuse) / "online.db").exists():
        return make_config(Path(reuse))
    flights_platform: FlightsPlatform = request.getfixturevalue("flights_platform")  # built only when needed
    home = tmp_path_factory.mktemp("served") / "mlsys"
    shutil.copytree(flights_platform.config.home, home, ignore=shutil.ignore_patterns("ray_results"))
    return make_config(home)
