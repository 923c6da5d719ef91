"""Off the happy path: no 5xx for any input the schema accepts, one bad request never fails its
batch, an empty store is refused rather than answered, and every error is JSON with a trace id."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
from typing import Any

import httpx
import pytest

from ml_system.config import PlatformConfig
from tests.conftest import make_config
from tests.serving.conftest import Deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EDGES = [
    "0001-01-01T00:00:00+14:00",  # before the first representable UTC instant
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59-14:00",  # after the last one
    "9999-12-31T23:59:59.999999+14:00",
    "1970-01-01T00:00:00Z",
    "2013-12-30T17:30:00+23:59",
    "2013-12-30T17:30:00-23:59",
    "2262-04-12T00:00:00Z",  # past pandas' nanosecond range
]


def is_problem(resp: httpx.Response) -> bool:
    body = resp.json()
    return "detail" in body and re.fullmatch(r"[0-9a-f]{32}", resp.headers.get("x-trace-id", "")) is not None


POISONED_TAIL = "N9POISN"


@pytest.fixture(scope="module")
def robust_home(served_home: PlatformConfig, tmp_path_factory: pytest.TempPathFactory) -> PlatformConfig:
    """A copy of the served platform whose online store holds one corrupt row (a text where a number goes)."""
    from ml_system.features import FeatureStore

    home = tmp_path_factory.mktemp("robust") / "mlsys"
    shutil.copytree(served_home.home, home, ignore=shutil.ignore_patterns("ray_results"))
    config = make_config(home)
    online = FeatureStore(config).online
    fields = ("plane_year", "plane_seats", "plane_engines")
    row = (POISONED_TAIL, 0, 0, ["not a year", 100.0, 2.0])
    online.write_batch("planes", [row], online.active_snapshot(), fields=fields)
    return config


@pytest.fixture(scope="module")
def fused_and_split(deploy_module: Deploy, robust_home: PlatformConfig) -> dict[str, str]:
    slow = {"batch_wait_timeout_s": 0.2, "feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
    home = robust_home.home
    return {
        "fused": deploy_module("edge_fused", home=home, user_config=slow),
        "split": deploy_module("edge_split", home=home, topology="split", user_config=slow),
    }


@pytest.mark.parametrize("topology", ["fused", "split"])
def test_no_input_the_schema_accepts_gets_a_5xx(
    fused_and_split: dict[str, str], demo_rows: list[dict[str, Any]], topology: str
) -> None:
    url = fused_and_split[topology]
    base = demo_rows[0]
    bodies: list[Any] = [{"flights": [{**base, "sched_dep_time": t}]} for t in EDGES]
    bodies += [
        {"flights": [{**base, "flight": 1}, {**base, "flight": 9999}]},
        {"flights": [{**base, "carrier": "ÜA"}]},
        {"flights": [{**base, "tailnum": "N\u00e9\u4e2d"}]},
        {"flights": [{**base, "origin": "\uff25\uff37\uff32"}]},  # full-width letters
        {"flights": [{**base, "flight": 2**63}]},
        {"flights": [{**base, "flight": -(2**63)}]},
        {"flights": [base] * 5 + [{**base, "sched_dep_time": EDGES[2]}]},
    ]
    for body in bodies:
        resp = httpx.post(f"{url}/predict", json=body, timeout=30)
        assert resp.status_code < 500, (body, resp.status_code, resp.text)
        if resp.status_code != 200:
            assert is_problem(resp), resp.text
    last = httpx.post(f"{url}/predict", json=bodies[-1], timeout=30)
    assert last.status_code == 422, last.text
    assert last.json()["detail"][0]["loc"] == ["body", "flights", 5, "sched_dep_time"], last.text


@pytest.mark.parametrize("topology", ["fused", "split"])
def test_one_bad_request_never_fails_the_requests_batched_with_it(
    fused_and_split: dict[str, str], demo_rows: list[dict[str, Any]], topology: str
) -> None:
    """A request whose plane has a corrupt online row fails alone (a 500, JSON with its trace id); the eight
    requests gathered into the same batch are answered as if it were not there."""
    url = fused_and_split[topology]
    good = [{"flights": [row]} for row in demo_rows[:8] if row["tailnum"] != POISONED_TAIL]
    bad = {"flights": [{**demo_rows[0], "tailnum": POISONED_TAIL}]}
    alone = [httpx.post(f"{url}/predict", json=b, timeout=30).json() for b in good]
    with concurrent.futures.ThreadPoolExecutor(9) as pool:  # gathered into one batch by the 200 ms wait
        responses = list(pool.map(lambda b: httpx.post(f"{url}/predict", json=b, timeout=30), [*good, bad]))
    assert [r.status_code for r in responses] == [200] * len(good) + [500], [r.text for r in responses]
    assert [r.json()["predictions"] for r in responses[:-1]] == [a["predictions"] for a in alone]
    assert is_problem(responses[-1]) and "internal error" in responses[-1].json()["detail"]


@pytest.fixture()
def empty_home(served_home: PlatformConfig, tmp_path: Any) -> PlatformConfig:
    """The trained platform with an online store nobody materialized into."""
    home = tmp_path / "mlsys"
    shutil.copytree(served_home.home, home, ignore=shutil.ignore_patterns("ray_results", "online.db*"))
    return make_config(home)


def test_a_replica_with_an_empty_store_refuses_until_the_store_is_filled(
    deploy: Deploy, empty_home: PlatformConfig, demo_rows: list[dict[str, Any]]
) -> None:
    """Nothing materialized: 503 with the reason rather than every flight scored with all features
    missing; once the store is filled, the replica answers by itself (no restart, no redeploy)."""
    import time

    from ml_system.features import FeatureStore
    from ml_system.usecases.flights.demo import DEMO_CUTOFF

    url = deploy.start("empty", home=empty_home.home)
    body = {"flights": demo_rows[:1]}
    refused = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        refused = httpx.post(f"{url}/predict", json=body, timeout=30)
        if "x-trace-id" in refused.headers:  # a replica answered (not the proxy)
            break
        time.sleep(0.5)
    assert refused is not None and refused.status_code == 503, refused.text if refused else None
    assert refused.headers["retry-after"] == "1" and is_problem(refused) and "materialize" in refused.text
    health = httpx.get(f"{url}/healthz", timeout=30)
    assert health.status_code == 503 and "materialize" in health.json()["detail"]
    before = httpx.get(f"{url}/info", timeout=30).json()["served_by"]

    FeatureStore(empty_home).materialize(None, DEMO_CUTOFF.to_pydatetime())
    answer = None
    deadline = time.monotonic() + 60  # health checks run every 2 s
    while time.monotonic() < deadline:
        answer = httpx.post(f"{url}/predict", json=body, timeout=30)
        if answer.status_code == 200:
            break
        time.sleep(0.5)
    assert answer is not None and answer.status_code == 200, answer.text if answer else None
    assert answer.json()["predictions"][0]["missing_features"] == []
    assert httpx.get(f"{url}/info", timeout=30).json()["served_by"] == before


def test_a_server_side_failure_is_json_with_a_trace_id_and_counted_by_status(
    fused_and_split: dict[str, str], demo_rows: list[dict[str, Any]]
) -> None:
    """The corrupt row again, alone: a 500 that is JSON with its trace id, in the request metric by status."""
    import time

    import ray

    url = fused_and_split["fused"]
    bad = {"flights": [{**demo_rows[0], "tailnum": POISONED_TAIL}]}
    resp = httpx.post(f"{url}/predict", json=bad, timeout=30)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/json" and is_problem(resp)
    ports = {n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    wanted = ('app="edge_fused"', 'route="/predict"', 'status="500"')
    deadline = time.monotonic() + 90  # replicas report every few seconds
    while time.monotonic() < deadline:
        text = "\n".join(httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in ports)
        lines = [ln for ln in text.splitlines() if ln.startswith("ray_mlsys_serve_requests_total{")]
        if any(all(w in ln for w in wanted) for ln in lines):
            return
        time.sleep(2)
    raise AssertionError("no mlsys_serve_requests sample for the 500")
