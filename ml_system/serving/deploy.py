"""Deploy Serve applications from Python: ``serve run`` and ``serve deploy`` equivalents.

``deploy_config`` takes the same document as ``serve deploy FILE`` and sends it
to the controller the same way, so the in-place update rules of config deploys
hold (a changed ``user_config`` reaches ``reconfigure`` on running replicas; a
``serve.run`` of a rebuilt app would start new ones). ``fast_serving_env`` is the
environment a cluster needs for the HAProxy ingress, measured several times
faster than the default proxy (benchmarks/serve_load.py), with Serve's throughput mode.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from ray import serve
from ray.serve import Application

from ml_system.config import ServingConfig
from ml_system.serving.haproxy_setup import haproxy_env


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it; a race with another binder stays possible)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_serving_env(state_dir: str | Path) -> dict[str, str]:
    """Environment for ``ray start``/``ray.init``: HAProxy ingress and Serve's throughput mode.

    ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` runs user code on the replica's own
    event loop (no thread hop per request), buffers request logs and freezes
    the start-up heap out of the GC; the price is that a blocking call in a
    handler stalls that replica's networking, which scoring a batch does only
    for a few hundred microseconds.

    HAProxy's files, ports and failover settings come from ``haproxy_setup.haproxy_env``
    (a private folder, a launcher that keeps the admin socket and stats private and dies with
    its parent, 1 s health checks and retries). The replicas HAProxy forwards to (HAProxy turns
    on Serve's direct ingress) default to ports 30000-31000, which two clusters on one machine
    would fight over; each cluster gets free stats/metrics ports and a window of 100 ports for
    its replicas.
    """
    base = min(free_port(), 65_400)
    return {
        **haproxy_env(state_dir),
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # HAProxy's per-request metric log line, parsed by a Python actor, costs CPU on every request;
        # the replicas count requests by route and status themselves (mlsys_serve_requests)
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # the controller's loop runs every 0.1 s by default, 35 ms of CPU a second on an idle 2-core
        # node; reconciling every 0.5 s halves that and delays a replacement or a scaling step by
        # at most 0.4 s, next to health checks every 2 s and autoscaling delays of seconds
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        # (RAY_SERVE_METRICS_EXPORT_INTERVAL_MS stays 100 ms: each export records every latency it
        # gathered, so a longer interval stalls the replica's event loop longer, once a second)
        # HAProxy's default of 4 threads competes with the replicas on small nodes
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, (os.cpu_count() or 2) // 2))),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 49),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 50),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 99),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


def wait_healthy(url: str, name: str, health_path: str = "/healthz", timeout_s: float = 120) -> str:
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
    return wait_healthy(url, name, health_path, timeout_s)


def deploy_config(document: dict[str, Any], timeout_s: float = 120, health_path: str = "/healthz") -> dict[str, str]:
    """What ``serve deploy`` does with a config document, after a full check; each app's base URL once healthy.

    A document that does not validate (``config_check``) raises ``ConfigError`` and nothing is sent.
    """
    from ray.serve._private.api import serve_start

    from ml_system.serving.config_check import validate_document

    schema = validate_document(document)
    http = schema.http_options
    client = serve_start(http_options={"host": http.host, "port": http.port})
    client.deploy_apps(schema)
    urls = {}
    for app in schema.applications:
        url = f"http://{http.host}:{http.port}{(app.route_prefix or '/').rstrip('/')}"
        urls[app.name] = wait_healthy(url, app.name, health_path, timeout_s)
    return urls
