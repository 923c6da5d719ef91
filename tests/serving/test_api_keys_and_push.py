"""Team tokens as API keys over real HTTP, and POST /push into a team's feature view.

A private copy of the served platform (its tokens, pushed rows and refusals stay in it), real
tokens issued through ``TokenStore``, two apps on the session's Serve proxy (which binds
loopback): one with the default (keys off for /predict on loopback), one with keys required.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.teams.groups import load_groups
from ml_system.teams.identity import TokenStore
from tests.conftest import make_config
from tests.serving.conftest import Deployer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VIEW = "carrier_stats"
FEATURES = ["carrier_delay_rate_20", "carrier_mean_delay_20", "carrier_delay_rate_3h", "carrier_departures_3h"]


class Platform:
    def __init__(self, config: PlatformConfig, open_url: str, keyed_url: str, tokens: dict[str, str]) -> None:
        self.config = config
        self.open_url = open_url
        self.keyed_url = keyed_url
        self.tokens = tokens

    def bearer(self, team: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[team]}"}


@pytest.fixture(scope="module")
def platform(
    served_home: PlatformConfig, serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("keyed") / "mlsys"
    shutil.copytree(served_home.home, home, ignore=shutil.ignore_patterns("ray_results", "teams"))
    config = make_config(home)
    groups = load_groups(REPO / "cluster" / "resource_groups.yaml")
    store = TokenStore(config.teams.state_dir)
    tokens = {team: store.issue(team, groups, label="test")[1] for team in ("delays", "arrivals")}
    deployer = Deployer(serve_port, str(home))
    try:
        open_url = deployer("keys_auto")
        keyed_url = deployer("keys_required", api_keys="required")
        yield Platform(config, open_url, keyed_url, tokens)
    finally:
        deployer.delete_all()


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-trace-id"])
    detail = resp.json()["detail"]
    if field is not None:
        assert any(d["loc"][-1] == field or f"{field}:" in d["msg"] for d in detail), detail


def test_predict_is_open_on_loopback_by_default_and_keyed_when_required(
    platform: Platform, demo_rows: list[dict[str, Any]]
) -> None:
    body = {"flights": demo_rows[:2]}
    assert httpx.post(f"{platform.open_url}/predict", json=body, timeout=30).status_code == 200

    assert_problem(httpx.post(f"{platform.keyed_url}/predict", json=body, timeout=30), 401)
    wrong = {"authorization": "Bearer mlsys_wrong"}
    assert_problem(httpx.post(f"{platform.keyed_url}/predict", json=body, headers=wrong, timeout=30), 401)
    ok = httpx.post(f"{platform.keyed_url}/predict", json=body, headers=platform.bearer("arrivals"), timeout=30)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 2
    api_key = {"x-api-key": platform.tokens["delays"]}
    assert httpx.post(f"{platform.keyed_url}/predict", json=body, headers=api_key, timeout=30).status_code == 200
    # the probe of load balancers never needs a key
    assert httpx.get(f"{platform.keyed_url}/healthz", timeout=30).status_code == 200


def test_info_needs_a_key_on_either_app(platform: Platform) -> None:
    for url in (platform.open_url, platform.keyed_url):
        assert_problem(httpx.get(f"{url}/info", timeout=30), 401)
        resp = httpx.get(f"{url}/info", headers=platform.bearer("delays"), timeout=30)
        assert resp.status_code == 200 and resp.json()["model_name"] == "flight_delay", resp.text


def push_row(carrier: str, rate: float) -> dict[str, Any]:
    row: dict[str, Any] = {"carrier": carrier, "event_timestamp": datetime.now(UTC).isoformat()}
    row.update({f: rate for f in FEATURES})
    row["carrier_departures_3h"] = 4  # a count: the view types it as an integer
    return row


def test_push_is_for_the_owning_team_and_checked_against_the_schema(platform: Platform) -> None:
    url = f"{platform.open_url}/push"
    body = {"view": VIEW, "rows": [push_row("ZQ", 0.25)]}

    assert_problem(httpx.post(url, json=body, timeout=30), 401)
    assert_problem(httpx.post(url, json=body, headers={"x-api-key": "mlsys_wrong"}, timeout=30), 401)
    assert_problem(httpx.post(url, json=body, headers=platform.bearer("arrivals"), timeout=30), 403)
    delays = platform.bearer("delays")
    assert_problem(httpx.post(url, json={**body, "view": "no_such_view"}, headers=delays, timeout=30), 404, "view")

    missing = {k: v for k, v in push_row("ZQ", 0.25).items() if k != "carrier_departures_3h"}
    extra = {**push_row("ZQ", 0.25), "surprise": 1.0}
    wrong_type = {**push_row("ZQ", 0.25), "carrier_delay_rate_20": "high"}
    fractional_count = {**push_row("ZQ", 0.25), "carrier_departures_3h": 2.5}
    no_offset = {**push_row("ZQ", 0.25), "event_timestamp": "2013-12-30T17:00:00"}
    for row, field in [
        (missing, "carrier_departures_3h"),
        (extra, "surprise"),
        (wrong_type, "carrier_delay_rate_20"),
        (fractional_count, "carrier_departures_3h"),
        (no_offset, "event_timestamp"),
    ]:
        assert_problem(httpx.post(url, json={"view": VIEW, "rows": [row]}, headers=delays, timeout=30), 422, field)
    store = FeatureStore(platform.config)
    ref = f"{VIEW}:carrier_delay_rate_20"
    assert store.get_online_features([ref], [{"carrier": "ZQ"}]).values["carrier_delay_rate_20"] == [None]

    ok = httpx.post(url, json=body, headers=delays, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"view": VIEW, "rows": 1, "entities_written": 1, "to": "online"}
    assert store.get_online_features([ref], [{"carrier": "ZQ"}]).values["carrier_delay_rate_20"] == [0.25]


def test_a_push_to_online_and_offline_appends_to_the_views_table_once(platform: Platform) -> None:
    store = FeatureStore(platform.config)
    before = len(store.offline.read_pandas(VIEW))
    body = {"view": VIEW, "rows": [push_row("ZR", 0.5), push_row("ZS", 0.75)], "to": "online_and_offline"}
    for _ in range(2):  # the retry of the same rows appends nothing
        resp = httpx.post(f"{platform.open_url}/push", json=body, headers=platform.bearer("delays"), timeout=60)
        assert resp.status_code == 200, resp.text
    table = store.offline.read_pandas(VIEW)
    assert len(table) == before + 2
    assert sorted(table[table["carrier"].isin(["ZR", "ZS"])]["carrier_delay_rate_20"]) == [0.5, 0.75]
    got = store.get_online_features([f"{VIEW}:carrier_delay_rate_20"], [{"carrier": "ZR"}, {"carrier": "ZS"}])
    assert got.values["carrier_delay_rate_20"] == [0.5, 0.75]
