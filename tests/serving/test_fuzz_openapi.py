"""Schemathesis reads the app's own OpenAPI document and fuzzes every operation, body included:
whatever the schema allows (and much that it does not) is answered 200 or 4xx, never 5xx, and
the answer conforms to what the document says."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.serving.conftest import Deployer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_url(deploy_module: Deployer) -> str:
    return deploy_module("fuzz", max_rows=20, user_config={"feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0})


@pytest.fixture(scope="module")
def api_schema(fuzz_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_operation_answers_within_its_documented_contract(
    data: st.DataObject, mode: GenerationMode, api_schema: Any, fuzz_url: str
) -> None:
    case = data.draw(api_schema.as_strategy(generation_mode=mode))
    response = case.call_and_validate(base_url=fuzz_url, timeout=30)
    SEEN[f"{mode.value} {case.method} {case.path} {response.status_code}"] += 1


def test_the_fuzzer_reached_every_outcome() -> None:
    """The run above is not vacuous: it scored real flights and was refused for bad ones."""
    print("schemathesis requests by operation and status:", dict(sorted(SEEN.items())))
    assert SEEN["positive POST /predict 200"] > 0 and SEEN["negative POST /predict 422"] > 0, SEEN
    assert not [k for k in SEEN if k.endswith(tuple(f" 5{d}{e}" for d in "0123456789" for e in "0123456789"))]
