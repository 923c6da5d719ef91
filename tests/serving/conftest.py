"""Serve on the session cluster: one HTTP port for every app of these tests, apps under their own prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ray import serve
from ray.serve import Application

from ml_system.config import PlatformConfig
from ml_system.serving.app import build_app
from ml_system.serving.deploy import wait_healthy
from ml_system.usecases.flights.demo import demo_requests

Deploy = Callable[..., str]


@pytest.fixture(scope="session")
def demo_rows(served_home: PlatformConfig) -> list[dict[str, Any]]:
    return demo_requests(served_home)


@pytest.fixture()
def deploy(serve_port: int, served_home: PlatformConfig) -> Iterator[Deploy]:
    """``deploy(name, **build_args)`` runs the flight app under ``/name`` and returns its URL; deleted after."""
    names: list[str] = []

    def _deploy(name: str, app: Application | None = None, **args: Any) -> str:
        app = app or build_app({"home": served_home.home, **args})
        serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
        names.append(name)
        return wait_healthy(f"http://127.0.0.1:{serve_port}/{name}", name)

    yield _deploy
    for name in names:
        serve.delete(name)
