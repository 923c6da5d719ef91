"""A bad config never takes the app down: a typo in ``user_config``, an autoscaling change that does
not validate or a misspelt builder argument is refused, and the replicas keep serving with what
they had, under load, with zero failed requests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from ray import serve

from ml_system.config import PlatformConfig
from ml_system.errors import ConfigError
from ml_system.serving.deploy import deploy_config
from tests.serving.test_reconfigure_and_autoscaling import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def steady_load(url: str, body: dict[str, Any]) -> Iterator[Counter[int]]:
    """Two clients posting back to back; the counter holds every status seen (0: no answer at all)."""
    seen: Counter[int] = Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    seen[c.post(f"{url}/predict", json=body).status_code] += 1
                except httpx.HTTPError:
                    seen[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


def raw_serve_deploy(doc: dict[str, Any]) -> None:
    """Exactly what the `serve deploy` CLI sends: only Serve's own schema is checked."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(doc)
    serve_start(http_options={"host": schema.http_options.host, "port": schema.http_options.port}).deploy_apps(schema)


def info(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/info", timeout=30).json()


def test_typos_are_refused_and_the_app_keeps_serving_under_load(
    serve_port: int, served_home: PlatformConfig, demo_rows: list[dict[str, Any]]
) -> None:
    doc = document(serve_port, served_home.home, "typo", {"autoscaling_config": None, "num_replicas": 1})
    url = deploy_config(doc)["typo"]
    app = doc["applications"][0]
    deployment = app["deployments"][0]
    try:
        before = info(url)
        with steady_load(url, {"flights": demo_rows[:1]}) as seen:
            time.sleep(2)
            deployment["user_config"]["max_batch_size"] = "64x"
            with pytest.raises(ConfigError, match=r"deployments\.0\.user_config\.max_batch_size"):
                deploy_config(doc)  # our deploy path refuses it before sending
            raw_serve_deploy(doc)  # `serve deploy` sends it (user_config is opaque to Serve): the replicas refuse it
            deadline = time.monotonic() + 60
            while "max_batch_size" not in info(url)["config_error"] and time.monotonic() < deadline:
                time.sleep(0.5)
            refused = info(url)
            scaling = {"min_replicas": 3, "max_replicas": 1}
            bad_scaling = {**doc, "applications": [{**app, "deployments": [{**deployment, "num_replicas": None,
                           "autoscaling_config": scaling}]}]}  # fmt: skip
            with pytest.raises(ConfigError, match=r"applications\.0\.deployments\.0\.autoscaling_config"):
                deploy_config(bad_scaling)  # refused before anything is sent
            bad_args = {**doc, "applications": [{**app, "args": {**app["args"], "topology": "fusd"}}]}
            with pytest.raises(ConfigError, match=r"applications\.0\.args\.topology"):
                deploy_config(bad_args)
            time.sleep(2)
        assert "max_batch_size" in refused["config_error"] and refused["max_batch_size"] == before["max_batch_size"]
        assert refused["served_by"] == before["served_by"]
        assert set(seen) == {200} and seen[200] > 20, seen
        status = serve.status().applications["typo"]
        assert str(status.status).endswith("RUNNING"), status

        deployment["user_config"]["max_batch_size"] = 32
        deploy_config(doc)
        deadline = time.monotonic() + 60
        while info(url)["max_batch_size"] != 32 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert info(url)["max_batch_size"] == 32 and not info(url)["config_error"]
    finally:
        serve.delete("typo")
