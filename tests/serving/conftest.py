"""Serve on the session cluster: one HTTP port for every app of these tests, apps under their own prefix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ray import serve
from ray.serve import Application

from ml_system.config import PlatformConfig
from ml_system.serving.app import build_app
from ml_system.serving.deploy import wait_healthy
from ml_system.usecases.flights.demo import demo_requests


@pytest.fixture(scope="session")
def demo_rows(served_home: PlatformConfig) -> list[dict[str, Any]]:
    return demo_requests(served_home)


class Deployer:
    """``deployer(name, **build_args)`` runs the flight app under ``/name`` and returns its URL once healthy;
    ``start`` returns at once (for apps that must not become healthy). Every app is deleted afterwards."""

    def __init__(self, serve_port: int, home: str) -> None:
        self.base = f"http://127.0.0.1:{serve_port}"
        self.home = home
        self.names: list[str] = []

    def start(self, name: str, app: Application | None = None, **args: Any) -> str:
        app = app or build_app({"home": self.home, **args})
        serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
        self.names.append(name)
        return f"{self.base}/{name}"

    def __call__(self, name: str, app: Application | None = None, **args: Any) -> str:
        return wait_healthy(self.start(name, app, **args), name)

    def delete_all(self) -> None:
        for name in self.names:
            serve.delete(name)


Deploy = Deployer


@pytest.fixture()
def deploy(serve_port: int, served_home: PlatformConfig) -> Iterator[Deployer]:
    deployer = Deployer(serve_port, served_home.home)
    yield deployer
    deployer.delete_all()


@pytest.fixture(scope="module")
def deploy_module(serve_port: int, served_home: PlatformConfig) -> Iterator[Deployer]:
    deployer = Deployer(serve_port, served_home.home)
    yield deployer
    deployer.delete_all()
