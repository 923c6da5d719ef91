"""The /predict contract over real HTTP: answers, and a 4xx naming the field for every bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serving.conftest import Deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_ROWS = 5


@pytest.fixture(scope="module")
def client(serve_port: int, served_home: Any) -> Iterator[httpx.Client]:
    from ray import serve

    from ml_system.serving.app import build_app
    from ml_system.serving.deploy import wait_healthy

    serve.run(build_app({"home": served_home.home, "max_rows": MAX_ROWS}), name="contract", route_prefix="/contract")
    url = wait_healthy(f"http://127.0.0.1:{serve_port}/contract", "contract")
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c
    serve.delete("contract")


def post_raw(client: httpx.Client, content: Any, **headers: str) -> httpx.Response:
    return client.post("/predict", content=content, headers={"content-type": "application/json", **headers})


def locs(resp: httpx.Response) -> list[list[Any]]:
    return [d["loc"] for d in resp.json()["detail"]]


def test_one_and_many_flights(client: httpx.Client, demo_rows: list[dict[str, Any]]) -> None:
    one = client.post("/predict", json={"flights": demo_rows[:1]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_name"] == "flight_delay" and body["model_version"]
    [pred] = body["predictions"]
    assert 0.0 <= pred["delay_probability"] <= 1.0
    assert pred["carrier"] == demo_rows[0]["carrier"] and isinstance(pred["delayed"], bool)
    assert re.fullmatch(r"[0-9a-f]{32}", one.headers["x-trace-id"])
    assert one.headers["x-trace-id"] != "0" * 32

    many = client.post("/predict", json={"flights": demo_rows[:MAX_ROWS]})
    assert many.status_code == 200, many.text
    preds = many.json()["predictions"]
    assert [(p["carrier"], p["flight"]) for p in preds] == [(r["carrier"], r["flight"]) for r in demo_rows[:MAX_ROWS]]
    # one row scored alone and inside a list gets the same probability
    assert preds[0]["delay_probability"] == pytest.approx(pred["delay_probability"], rel=1e-6)


def test_unknown_entities_are_scored_and_listed(client: httpx.Client, demo_rows: list[dict[str, Any]]) -> None:
    row = {**demo_rows[0], "tailnum": "N0000Z", "dest": "ZZZ"}
    resp = client.post("/predict", json={"flights": [row]})
    assert resp.status_code == 200, resp.text
    missing = resp.json()["predictions"][0]["missing_features"]
    assert "planes" in missing and "route_stats" in missing


@pytest.mark.parametrize(
    ("content", "expected_loc"),
    [
        (b'{"flights": [', ["body"]),
        (b"", ["body"]),
        (b'{"flights": []}', ["body", "flights"]),
        (b'{"flights": "UA"}', ["body", "flights"]),
        (b'{"planes": []}', ["body", "flights"]),
        (b'{"flights": [{"carrier": "UA"}]}', ["body", "flights", 0, "flight"]),
        (
            b'{"flights": [{"carrier": "UA", "flight": "many", "origin": "EWR", "dest": "ORD",'
            b' "sched_dep_time": "2013-12-30T17:02:00-05:00"}]}',
            ["body", "flights", 0, "flight"],
        ),
        (
            b'{"flights": [{"carrier": "UA", "flight": NaN, "origin": "EWR", "dest": "ORD",'
            b' "sched_dep_time": "2013-12-30T17:02:00-05:00"}]}',
            ["body", "flights", 0, "flight"],
        ),
        (
            b'{"flights": [{"carrier": "UA", "flight": Infinity, "origin": "EWR", "dest": "ORD",'
            b' "sched_dep_time": "2013-12-30T17:02:00-05:00"}]}',
            ["body", "flights", 0, "flight"],
        ),
        (
            b'{"flights": [{"carrier": "UA", "flight": 1, "origin": "EWR", "dest": "ORD",'
            b' "sched_dep_time": "2013-12-30T17:02:00"}]}',
            ["body", "flights", 0, "sched_dep_time"],
        ),
        (
            b'{"flights": [{"carrier": "UA", "flight": 1, "origin": "EWR", "dest": "ORD", "gate": 3,'
            b' "sched_dep_time": "2013-12-30T17:02:00-05:00"}]}',
            ["body", "flights", 0, "gate"],
        ),
    ],
    ids=[
        "invalid-json",
        "empty-body",
        "empty-list",
        "wrong-type-list",
        "missing-flights",
        "missing-fields",
        "wrong-type-int",
        "nan",
        "infinity",
        "naive-time",
        "extra-field",
    ],
)
def test_bad_payloads_get_422_naming_the_field(client: httpx.Client, content: bytes, expected_loc: list[Any]) -> None:
    resp = post_raw(client, content)
    assert resp.status_code == 422, resp.text
    assert expected_loc in locs(resp), resp.text
    assert "x-trace-id" in resp.headers


def test_more_rows_than_the_limit_get_413(client: httpx.Client, demo_rows: list[dict[str, Any]]) -> None:
    resp = client.post("/predict", json={"flights": demo_rows[:1] * (MAX_ROWS + 1)})
    assert resp.status_code == 413, resp.text
    assert locs(resp) == [["body", "flights"]]
    assert f"limit is {MAX_ROWS}" in resp.text


def test_body_past_the_size_limit_gets_413(client: httpx.Client) -> None:
    big = b'{"flights": [' + b" " * 1_100_000 + b"]}"
    resp = post_raw(client, big)
    assert resp.status_code == 413, resp.text
    assert "limit" in resp.json()["detail"]


def test_chunked_body_without_length_past_the_limit_gets_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"flights": ['
        for _ in range(40):
            yield b" " * 50_000
        yield b"]}"

    resp = post_raw(client, chunks())
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413, resp.text


def test_chunked_body_within_the_limit_is_scored(client: httpx.Client, demo_rows: list[dict[str, Any]]) -> None:
    import json

    payload = json.dumps({"flights": demo_rows[:2]}).encode()

    def chunks() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    resp = post_raw(client, chunks())
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["predictions"]) == 2


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_openapi_documents_the_payload_and_every_ref_resolves(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/predict"]["post"]
    schema = _resolve(spec, post["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert "flights" in schema["properties"] and schema["additionalProperties"] is False
    flight = _resolve(spec, schema["properties"]["flights"]["items"]["$ref"])
    assert {"carrier", "sched_dep_time"} <= set(flight["properties"])
    assert {"413", "422", "503"} <= set(post["responses"])
    refs = list(_refs(spec))
    assert len(refs) >= 3
    for ref in refs:
        _resolve(spec, ref)  # a KeyError names the ref that points nowhere


def test_overload_answers_503_with_retry_after(
    deploy: Deploy, served_home: Any, demo_rows: list[dict[str, Any]]
) -> None:
    """One request in flight and one queued: the rest are refused at once, none hang or fail with 500."""
    import concurrent.futures

    from ml_system.serving.app import AppArgs
    from ml_system.serving.ingress import Ingress

    slow = {"max_batch_size": 64, "batch_wait_timeout_s": 2.0, "feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
    app = Ingress.options(max_ongoing_requests=1, max_queued_requests=1, user_config=slow).bind(
        None, AppArgs(home=served_home.home).ingress_args()
    )
    url = deploy("overload", app=app)

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{url}/predict", json={"flights": demo_rows[:1]}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert 200 in codes and codes.count(503) >= 4, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
