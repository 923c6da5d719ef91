"""Split topology: session affinity through ConsistentHashRouter, and one trace across processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import Deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces") / "spans.jsonl"


@pytest.fixture()
def sticky_url(deploy: Deploy, served_home: Any, spans_file: Path) -> str:
    from ml_system.serving.app import AppArgs
    from ml_system.serving.ingress import Ingress, ScorerDeployment
    from ml_system.serving.settings import ScorerSettings

    args = AppArgs(home=served_home.home, tracing_exporter=f"file:{spans_file}")
    scorer = ScorerDeployment.options(
        num_replicas=2,
        ray_actor_options={"num_cpus": 0.1},
        user_config=ScorerSettings().model_dump(),
        request_router_config={"request_router_class": ROUTER, "request_router_kwargs": {"num_fallback_replicas": 0}},
    ).bind(args.scorer_args(), args.tracing_exporter)
    app = Ingress.options(ray_actor_options={"num_cpus": 0.1}).bind(scorer, args.ingress_args())
    return deploy("sticky", app=app)


def served_by(url: str, row: dict[str, Any], session: str | None) -> str:
    headers = {"x-session-id": session} if session else {}
    resp = httpx.post(f"{url}/predict", json={"flights": [row]}, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-served-by"]


def test_one_session_lands_on_one_replica(sticky_url: str, demo_rows: list[dict[str, Any]]) -> None:
    for session in ("alice", "bob", "carol"):
        replicas = {served_by(sticky_url, demo_rows[i % len(demo_rows)], session) for i in range(12)}
        assert len(replicas) == 1, (session, replicas)
    # and the sessions are spread: 20 sessions all on one of two replicas would mean no routing at all
    spread = {served_by(sticky_url, demo_rows[0], f"session-{i}") for i in range(20)}
    assert len(spread) == 2, spread


def test_trace_spans_ingress_features_and_model_across_replicas(
    sticky_url: str, spans_file: Path, demo_rows: list[dict[str, Any]]
) -> None:
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01", "x-session-id": "trace-test"}
    resp = httpx.post(f"{sticky_url}/predict", json={"flights": demo_rows[:2]}, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-trace-id"] == parent_trace
    names: dict[str, set[int]] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = {}
        if spans_file.exists():
            for line in spans_file.read_text().splitlines():
                span = json.loads(line)
                if span["context"]["trace_id"] == "0x" + parent_trace:
                    names.setdefault(span["name"], set()).add(span["resource"]["attributes"].get("process.pid", 0))
        if {"predict", "scorer", "features", "model"} <= set(names):
            break
        time.sleep(0.5)
    assert {"predict", "scorer", "features", "model"} <= set(names), names
