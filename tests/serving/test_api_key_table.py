"""When a replica asks for a key, and its hash table: real tokens issued and revoked through ``TokenStore``."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.datastructures import Headers

from ml_system.config import PlatformConfig
from ml_system.serving.api_keys import ApiKeys, is_loopback
from ml_system.serving.http import HTTPProblem
from ml_system.teams.groups import load_groups
from ml_system.teams.identity import TokenStore
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def config(tmp_path: Path) -> PlatformConfig:
    return make_config(tmp_path / "mlsys", MLSYS_TEAMS__RESOURCE_GROUPS=str(REPO / "cluster" / "resource_groups.yaml"))


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "serving.internal"))


def test_auto_keys_predict_only_on_an_exposed_platform_with_tokens(config: PlatformConfig) -> None:
    exposed, local = ApiKeys(config, "auto", "0.0.0.0"), ApiKeys(config, "auto", "127.0.0.1")
    assert not exposed.predict_needs_key and not local.predict_needs_key  # no token yet: open, like the CLI
    assert ApiKeys(config, "required", "127.0.0.1").predict_needs_key
    store = TokenStore(config.teams.state_dir)
    record, token = store.issue("delays", load_groups(config.teams.resource_groups))
    exposed.load()
    local.load()
    assert exposed.predict_needs_key and not local.predict_needs_key
    assert not ApiKeys(config, "off", "0.0.0.0").predict_needs_key

    assert exposed.caller(Headers({"authorization": f"Bearer {token}"})).team == "delays"
    assert exposed.caller(Headers({"x-api-key": token})).token_id == record.id
    for headers in ({}, {"authorization": f"Basic {token}"}, {"x-api-key": token + "x"}):
        with pytest.raises(HTTPProblem) as refused:
            exposed.caller(Headers(headers))
        assert refused.value.status == 401 and token not in str(refused.value.detail)

    store.revoke(record.id)
    exposed.load()  # what the replica does once it sees tokens.json change
    with pytest.raises(HTTPProblem):
        exposed.caller(Headers({"x-api-key": token}))
