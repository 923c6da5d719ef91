"""Feature views belong to a team: with team tokens issued, `mlsys features apply | lifecycle` need the
owning team's token, a refusal changes nothing and is logged, and the registry records the token's team."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ml_system.cli.main import app
from ml_system.features.registry import Registry
from ml_system.teams.groups import load_groups
from ml_system.teams.identity import TokenStore

runner = CliRunner()

GROUPS = "teams:\n  a:\n    quota: {cpu: 1}\n  b:\n    quota: {cpu: 1}\n"
DEFS = """
from ml_system.features import DeltaSource, Entity, FeatureView, Field

driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate"){extra}], DeltaSource("stats"), team="{team}")
"""


@pytest.fixture()
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "groups.yaml").write_text(GROUPS)
    monkeypatch.setenv("MLSYS_TEAMS__RESOURCE_GROUPS", str(tmp_path / "groups.yaml"))
    monkeypatch.delenv("MLSYS_TEAM_TOKEN", raising=False)
    return tmp_path / "mlsys"


def defs(folder: Path, name: str, team: str = "a", extra: str = "") -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(DEFS.format(team=team, extra=extra)))
    return name


def mlsys(home: Path, *args: str, token: str | None = None) -> tuple[int, str]:
    env = {"MLSYS_TEAM_TOKEN": token} if token else {}
    result = runner.invoke(app, [*args, "--home", str(home)], env=env)
    return result.exit_code, result.output


def refusals(home: Path) -> list[dict[str, str]]:
    path = home / "teams" / "refusals.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def issue(home: Path, team: str) -> tuple[str, str]:
    record, token = TokenStore(home / "teams").issue(team, load_groups(Path(home.parent / "groups.yaml")))
    return record.id, token


def test_an_open_platform_takes_changes_without_a_token(platform: Path) -> None:
    code, out = mlsys(platform, "features", "apply", "-m", defs(platform.parent, "open_v1"), "--by", "alice")
    assert code == 0, out
    registry = Registry(str(platform / "registry"))
    assert registry.document()["created_by"] == "alice"
    assert registry.feature_view("stats").team == "a"


def test_apply_and_lifecycle_need_the_owning_teams_token(platform: Path) -> None:
    v1 = defs(platform.parent, "owned_v1")
    a_id, a_token = issue(platform, "a")
    _, b_token = issue(platform, "b")

    for token, reason in [(None, "no token"), ("mlsys_not-a-token", "unknown token")]:
        code, out = mlsys(platform, "features", "apply", "-m", v1, token=token)
        assert code == 1 and len(out.strip().splitlines()) == 1, out
        assert refusals(platform)[-1]["reason"] == reason
    assert not (platform / "registry").exists() or Registry(str(platform / "registry")).version == 0

    code, out = mlsys(platform, "features", "apply", "-m", v1, token=b_token)
    assert code == 1 and "belongs to team 'a'" in out and len(out.strip().splitlines()) == 1, out
    assert "team 'b'" in refusals(platform)[-1]["reason"]
    assert Registry(str(platform / "registry")).version == 0

    code, out = mlsys(platform, "features", "apply", "-m", v1, token=a_token)
    assert code == 0, out
    registry = Registry(str(platform / "registry"))
    assert registry.version == 1
    who = f"team a (token {a_id})"
    assert registry.document()["created_by"] == who
    assert [e.by for e in registry.history("stats")] == [who]

    # a change by another team, or a --by text in place of the token, writes nothing
    v2 = defs(platform.parent, "owned_v2", extra=', Field("trips")')
    logged = len(refusals(platform))
    code, out = mlsys(platform, "features", "apply", "-m", v2, token=b_token)
    assert code == 1 and registry.version == 1 and len(refusals(platform)) == logged + 1, out
    code, out = mlsys(platform, "features", "apply", "-m", v2, "--by", "mallory", token=a_token)
    assert code == 1 and "--by" in out and registry.version == 1, out

    # handing the view to a team that does not exist is refused with the team named
    code, out = mlsys(platform, "features", "apply", "-m", defs(platform.parent, "owned_v3", team="c"), token=a_token)
    assert code == 1 and "team 'c'" in out and registry.version == 1, out

    code, out = mlsys(platform, "features", "lifecycle", "stats", "deprecated", token=b_token)
    assert code == 1 and "belongs to team 'a'" in out, out
    assert registry.feature_view("stats").lifecycle.value == "active" and registry.version == 1
    code, out = mlsys(platform, "features", "lifecycle", "stats", "deprecated", "--reason", "v2", token=a_token)
    assert code == 0, out
    assert registry.feature_view("stats").lifecycle.value == "deprecated"
    assert registry.history("stats")[-1].by == who and registry.document()["created_by"] == who
