"""Stream fixtures: a private redis-server per test module (tests stop and kill it), and small stream views."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from ml_system.config import PlatformConfig
from ml_system.features import Entity, Field
from ml_system.features.streaming.consumer import StreamIngestor
from ml_system.features.streaming.views import Aggregation, EventSource, StreamFeatureView
from ml_system.serving.deploy import free_port
from tests.conftest import make_config, wait_for_port


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
        client = redis.Redis.from_url(self.url)
        for _ in range(200):  # replaying its append-only file, it answers LOADING for a moment
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)
        client.close()

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


def stream_config(home: Path, url: str, **extra: str) -> PlatformConfig:
    """A platform whose online store, broker and window state are the private Redis."""
    overrides = {
        "MLSYS_ONLINE_STORE__TYPE": "redis",
        "MLSYS_ONLINE_STORE__REDIS_URL": url,
        "MLSYS_STREAMING__BROKER_URL": url,
        "MLSYS_STREAMING__STREAM": "payments",
        "MLSYS_STREAMING__BLOCK_MS": "10",
        "MLSYS_STREAMING__BATCH_SIZE": "50",
        **{f"MLSYS_STREAMING__{k.upper()}": v for k, v in extra.items()},
    }
    return make_config(home, **overrides)


def payment_events(n: int, seed: int = 7, hours: float = 7.0) -> pd.DataFrame:
    """``n`` payments over the last ``hours``: 6 users, 3 merchants, some amounts missing, some shared times."""
    rng = np.random.default_rng(seed)
    base = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=hours + 0.5)
    offsets = np.sort(rng.integers(0, int(hours * 3600), n // 2))
    offsets = np.sort(np.concatenate([offsets, rng.choice(offsets, n - n // 2)]))  # many events share a time
    amount = rng.gamma(2.0, 20.0, n).round(2)
    amount[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "event_id": [f"p{i}" for i in range(n)],
            "event_timestamp": base + pd.to_timedelta(offsets, unit="s"),
            "user_id": rng.choice([f"u{i}" for i in range(6)], n),
            "merchant_id": rng.integers(1, 4, n).astype("int64"),
            "amount": amount,
            "flagged": rng.random(n) < 0.3,
        }
    )


def as_messages(events: pd.DataFrame) -> list[dict[str, str]]:
    """Events as a producer sends them on a stream: text fields, ISO times with offset, empty for missing."""
    out = []
    for row in events.itertuples(index=False):
        out.append(
            {
                "event_id": row.event_id,
                "event_timestamp": row.event_timestamp.isoformat(),
                "user_id": row.user_id,
                "merchant_id": str(row.merchant_id),
                "amount": "" if np.isnan(row.amount) else repr(float(row.amount)),
                "flagged": "true" if row.flagged else "false",
            }
        )
    return out


def drain(ingestor: StreamIngestor, idle_rounds: int = 3) -> None:
    """Run the consumer until the stream has nothing for it several reads in a row."""
    quiet = 0
    while quiet < idle_rounds:
        quiet = quiet + 1 if ingestor.step() == 0 else 0


def same(a: object, b: object) -> bool:
    """Equal feature values, a missing one being None online and NaN offline."""
    missing_a = a is None or (isinstance(a, float) and np.isnan(a))
    missing_b = b is None or (isinstance(b, float) and np.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    return float(a) == float(b)  # type: ignore[arg-type]
