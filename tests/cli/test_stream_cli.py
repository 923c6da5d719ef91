"""`mlsys stream start|status|stop` through the real CLI, on the session's Ray cluster and a private Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_system.cli.main import app
from ml_system.features import FeatureStore
from ml_system.features.streaming.sources import open_stream_source
from tests.features.streaming.conftest import (
    MERCHANT,
    USER,
    RedisServer,
    as_messages,
    payment_events,
    payment_views,
    stream_config,
)
from tests.features.streaming.conftest import private_redis as private_redis
from tests.features.streaming.test_consumer_group import wait_until

runner = CliRunner()


def test_start_status_stop_from_the_command_line(
    tmp_path: Path, private_redis: RedisServer, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "mlsys"
    env = {
        "MLSYS_HOME": str(home),
        "MLSYS_ONLINE_STORE__TYPE": "redis",
        "MLSYS_ONLINE_STORE__REDIS_URL": private_redis.url,
        "MLSYS_STREAMING__BROKER_URL": private_redis.url,
        "MLSYS_STREAMING__STREAM": "payments",
        "MLSYS_STREAMING__GROUP": "cli",
        "MLSYS_STREAMING__CONSUMER_CPUS": "0.25",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = runner.invoke(app, ["stream", "start"])
    assert out.exit_code == 1 and "no stream feature views are registered" in out.output

    config = stream_config(home, private_redis.url, group="cli")
    FeatureStore(config).apply([USER, MERCHANT, *payment_views()])
    out = runner.invoke(app, ["stream", "start", "--consumers", "2"])
    assert out.exit_code == 0, out.output
    assert "started 2 consumers of group 'cli' on stream 'payments'" in out.output
    open_stream_source(config.streaming).publish(as_messages(payment_events(200)))

    def report() -> dict:
        result = runner.invoke(app, ["stream", "status", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    wait_until("200 events ingested", lambda: sum(c.get("events", 0) for c in report()["consumers"].values()) == 200)
    assert report()["backlog"] == {"pending": 0, "lag": 0}
    out = runner.invoke(app, ["stream", "status"])
    assert "cli/0" in out.output and "cli/1" in out.output and "running" in out.output
    out = runner.invoke(app, ["stream", "stop"])
    assert out.exit_code == 0 and "stopped 2 consumers of group 'cli'" in out.output
    assert report()["consumers"] == {}
