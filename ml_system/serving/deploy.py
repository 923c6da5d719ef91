"""Start Serve's HTTP proxy and run an application from Python (what ``serve run`` does)."""

from __future__ import annotations

import time

import httpx
from ray import serve
from ray.serve import Application

from ml_system.config import ServingConfig


def run_app(
    app: Application,
    name: str,
    config: ServingConfig,
    route_prefix: str = "/",
    health_path: str = "/healthz",
    timeout_s: float = 120,
) -> str:
    """Deploy and wait until ``health_path`` answers 200; returns the base URL."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    url = f"http://{config.host}:{config.port}{route_prefix.rstrip('/')}"
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url + health_path, timeout=10)
            if resp.status_code == 200:
                return url
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        status = serve.status().applications.get(name)
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            raise RuntimeError(f"application '{name}' failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application '{name}' did not become healthy at {url}{health_path}: {last}")
