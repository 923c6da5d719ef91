"""Resource groups refuse bad YAML with the field named; team tokens are stored hashed and checked per team."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_system.errors import AuthenticationError, TeamError
from ml_system.teams.groups import load_groups, parse_groups
from ml_system.teams.identity import TokenStore, authenticate, authorize, hash_token
from ml_system.teams.resources import GIB, Resources

REPO = Path(__file__).resolve().parents[2]
TWO = {"teams": {"a": {"quota": {"cpu": 2}, "priority": 3}, "b": {"quota": {"cpu": 1, "memory_gb": 2}}}}


def test_the_shipped_resource_groups_parse() -> None:
    groups = load_groups(REPO / "cluster" / "resource_groups.yaml")
    assert set(groups.teams) == {"delays", "arrivals"}
    assert groups.total_quota() == Resources(cpu=4)
    assert groups.give_back_s == 30


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("teams:\n  a:\n    quota: {cpu: -1}\n", "teams.a.quota.cpu"),
        ("teams:\n  a:\n    quota: {cpu: 1, cpus: 2}\n", "teams.a.quota.cpus"),
        ("teams:\n  a:\n    priority: 3\n", "teams.a.quota"),  # a team without a quota
        ("teams:\n  a:\n    quota: {cpu: 0}\n", "teams.a.quota"),  # an empty quota is no quota
        ("teams:\n  Team_A:\n    quota: {cpu: 1}\n", "teams"),
        ("teams:\n  a:\n    quota: {cpu: 1}\n    can_borow: true\n", "teams.a.can_borow"),
        ("teams:\n  a:\n    quota: {cpu: 1}\n    token_sha256: [abc]\n", "teams.a.token_sha256"),
        ("give_back_s: 0\nteams:\n  a:\n    quota: {cpu: 1}\n", "give_back_s"),
        ("teams: {}\n", "teams"),
    ],
)
def test_bad_resource_groups_are_refused_with_the_field_named(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    with pytest.raises(TeamError, match=f"field '{field}'"):
        load_groups(path)


def test_unreadable_or_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TeamError, match="does not exist"):
        load_groups(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("teams: [unclosed\n")
    with pytest.raises(TeamError, match="not valid YAML"):
        load_groups(tmp_path / "bad.yaml")


def test_quotas_must_fit_the_cluster_one_by_one_and_together() -> None:
    groups = parse_groups(TWO)
    groups.check_capacity(Resources(cpu=3, memory=4 * GIB))
    with pytest.raises(TeamError, match="team 'a': quota 2 CPU is larger than the cluster"):
        groups.check_capacity(Resources(cpu=1.5, memory=4 * GIB))
    with pytest.raises(TeamError, match="quotas add up to 3 CPU, 2 GiB, more than the cluster"):
        groups.check_capacity(Resources(cpu=2, memory=4 * GIB))
    with pytest.raises(TeamError, match=r"team 'b'.*larger than the cluster"):
        groups.check_capacity(Resources(cpu=8, memory=1 * GIB))


def test_a_token_authenticates_its_team_only_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    groups = parse_groups(TWO)
    store = TokenStore(tmp_path)
    record, token = store.issue("a", groups, label="ci")
    assert token.startswith("mlsys_") and len(token) > 40
    stored = (tmp_path / "tokens.json").read_text()
    assert token not in stored and hash_token(token) in stored
    assert authenticate(token, groups, store).name == "a"
    assert authorize(token, "a", groups, store).priority == 3
    with pytest.raises(AuthenticationError, match="belongs to team 'a', not 'b'"):
        authorize(token, "b", groups, store)
    with pytest.raises(AuthenticationError, match="not valid"):
        authenticate(token[:-1] + ("x" if token[-1] != "x" else "y"), groups, store)
    with pytest.raises(AuthenticationError, match="MLSYS_TEAM_TOKEN"):
        authenticate(None, groups, store)
    with pytest.raises(TeamError, match="unknown team 'c'"):
        authorize(token, "c", groups, store)
    store.revoke(record.id)
    with pytest.raises(AuthenticationError):
        authenticate(token, groups, store)
    with pytest.raises(TeamError, match="no token with id"):
        store.revoke(record.id)


def test_hashes_in_the_yaml_authenticate_and_a_removed_team_s_token_does_not(tmp_path: Path) -> None:
    token = "mlsys_from-a-secret-manager"
    doc = json.loads(json.dumps(TWO))
    doc["teams"]["b"]["token_sha256"] = [hash_token(token)]
    assert authenticate(token, parse_groups(doc), None).name == "b"
    store = TokenStore(tmp_path)
    _, issued = store.issue("b", parse_groups(doc))
    del doc["teams"]["b"]
    with pytest.raises(AuthenticationError):
        authenticate(issued, parse_groups(doc), store)
