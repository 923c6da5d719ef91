"""Stream fixtures: a private redis-server per test module (tests stop and kill it), and small stream views."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from ml_system.features import Entity, Field
from ml_system.features.streaming.views import Aggregation, EventSource, StreamFeatureView
from ml_system.serving.deploy import free_port
from tests.conftest import wait_for_port


@dataclass
class RedisServer:
    """A redis-server this test owns: it may be paused (SIGSTOP), killed and started again on the same port."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc, "redis-server", 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    yield server
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait(timeout=10)


USER = Entity(name="user", join_keys=["user_id"])
MERCHANT = Entity(name="merchant", join_keys=["merchant_id"], value_type="int64")
PAYMENTS = EventSource(
    name="payments",
    schema=[Field("amount", "float64"), Field("flagged", "bool")],
    table="payment_events",
)


def payment_views(lateness: timedelta = timedelta(minutes=30)) -> list[StreamFeatureView]:
    """Two views over the same events, keyed differently, with time and last-N windows."""
    return [
        StreamFeatureView(
            name="user_payments",
            entities=[USER],
            events=PAYMENTS,
            aggregations=[
                Aggregation("amount", "count", window=timedelta(hours=1)),
                Aggregation("amount", "sum", window=timedelta(hours=1)),
                Aggregation("amount", "mean", window=timedelta(hours=3)),
                Aggregation("amount", "max", window=timedelta(hours=1)),
                Aggregation("amount", "sum", last_n=3),
                Aggregation("flagged", "mean", last_n=5),
            ],
            allowed_lateness=lateness,
            ttl=timedelta(days=1),
        ),
        StreamFeatureView(
            name="merchant_payments",
            entities=[MERCHANT],
            events=PAYMENTS,
            aggregations=[
                Aggregation("amount", "count", window=timedelta(hours=3)),
                Aggregation("amount", "min", window=timedelta(hours=1)),
            ],
            allowed_lateness=lateness,
        ),
    ]
