"""Honest health end to end: a Serve app whose Redis stalls answers 503, fails its health check, and recovers.

The online store is a private ``redis-server`` started here (never the session's), stalled with
``SIGSTOP`` and resumed with ``SIGCONT`` in a ``finally``. Caches are off, so every request
reads the store. Nothing is timed: a request must come back (a generous client timeout turns a
hang into a failure), and states are polled under generous deadlines.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from ml_system.config import PlatformConfig
from ml_system.pipelines import steps
from ml_system.serving.deploy import deploy_config
from ml_system.usecases.flights.demo import DEMO_CUTOFF
from tests.conftest import make_config
from tests.polling import wait_until
from tests.serving.test_reconfigure_and_autoscaling import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "stall"
HANG_S = 30.0  # a request still open after this long counts as hung


def test_a_stalled_redis_gives_503_fails_the_health_check_and_recovers_by_itself(
    served_home: PlatformConfig,
    serve_port: int,
    demo_rows: list[dict[str, Any]],
    private_redis: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    url_redis, redis_proc = private_redis
    store_env = {"MLSYS_ONLINE_STORE__TYPE": "redis", "MLSYS_ONLINE_STORE__REDIS_URL": url_redis}
    home = tmp_path / "mlsys"
    shutil.copytree(served_home.home, home, ignore=shutil.ignore_patterns("ray_results", "online.db*"))
    config = make_config(home, **store_env)
    steps.materialize(config, end=DEMO_CUTOFF.to_pydatetime())
    no_cache = {"feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
    doc = document(serve_port, str(home), NAME, {"autoscaling_config": None, "num_replicas": 1})
    deployment = doc["applications"][0]["deployments"][0]
    deployment["user_config"].update(no_cache)
    deployment["ray_actor_options"]["runtime_env"] = {"env_vars": store_env}
    deployment["health_check_period_s"] = 1
    deployment["health_check_timeout_s"] = 5
    url = deploy_config(doc)[NAME]
    body = {"flights": demo_rows[:1]}
    try:
        with httpx.Client(timeout=HANG_S) as client:
            first = client.post(f"{url}/predict", json=body)
            assert first.status_code == 200, first.text
            replica_before = client.get(f"{url}/info").json()["served_by"]

            os.kill(redis_proc.pid, signal.SIGSTOP)
            stalled = client.post(f"{url}/predict", json=body)  # must come back, not hang
            assert stalled.status_code == 503, stalled.text
            assert stalled.headers["retry-after"] == "1"
            assert "online store unavailable" in stalled.text

            def health_failed() -> bool:
                status = serve.status().applications[NAME].deployments["Ingress"]
                return str(status.status).endswith("UNHEALTHY") or status.replica_states.get("RUNNING", 0) == 0

            wait_until("Serve sees the replica's health check fail", health_failed)

            os.kill(redis_proc.pid, signal.SIGCONT)

            def answers() -> bool:
                try:
                    return client.post(f"{url}/predict", json=body).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until("the app answers again by itself", answers, timeout_s=180)
            replica_after = client.get(f"{url}/info").json()["served_by"]
        assert replica_after != replica_before, "the unhealthy replica was not replaced"
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
        serve.delete(NAME)
