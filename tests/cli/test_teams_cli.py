"""``mlsys groups`` and ``mlsys experiments`` as a user runs them: tokens, one-line refusals, tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from ml_system.teams.admission import NAMESPACE, actor_name
from ml_system.teams.experiments import HypothesisQueue

MLSYS = [sys.executable, "-m", "ml_system.cli"]
GROUPS = """
give_back_s: 20
teams:
  a: {quota: {cpu: 1}, priority: 3}
  b: {quota: {cpu: 1}}
"""


def mlsys(*args: str, home: Path, token: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "200", "MLSYS_HOME": str(home), **env}
    environ.pop("MLSYS_TEAM_TOKEN", None)
    if token is not None:
        environ["MLSYS_TEAM_TOKEN"] = token
    return subprocess.run([*MLSYS, *args], capture_output=True, text=True, env=environ, timeout=300)


def one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


def issue(team: str, groups: Path, home: Path) -> str:
    out = mlsys("groups", "token", "issue", team, "--groups", str(groups), home=home)
    assert out.returncode == 0, out.stderr
    return re.search(r"mlsys_\S+", out.stdout).group(0)  # type: ignore[union-attr]


def test_team_commands_refuse_missing_or_foreign_tokens_and_change_nothing(tmp_path: Path) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text(GROUPS)
    home = tmp_path / "mlsys"
    token_a, token_b = issue("a", groups, home), issue("b", groups, home)
    submit = ["experiments", "submit", "--team", "a", "--groups", str(groups), "--expected-gain", "0.01"]

    one_line_error(mlsys(*submit, home=home), "no team token", "MLSYS_TEAM_TOKEN")
    one_line_error(mlsys(*submit, home=home, token=token_b), "belongs to team 'b', not 'a'")
    one_line_error(mlsys(*submit, "--concurrency", "2", home=home, token=token_a), "more than its quota")
    assert not (home / "teams" / "experiments.json").exists()  # nothing was queued by any refusal
    refusals = (home / "teams" / "refusals.log").read_text()
    assert refusals.count("\n") == 2 and token_a not in refusals and "acting for team 'a'" in refusals

    space = '{"max_depth": {"randint": [3, 6]}}'
    queued = mlsys(*submit, "--priority", "4", "--space", space, home=home, token=token_a)
    assert queued.returncode == 0, queued.stderr
    exp_id = re.search(r"exp-[0-9a-f]+", queued.stdout).group(0)  # type: ignore[union-attr]
    listed = mlsys("experiments", "list", home=home)
    assert listed.returncode == 0 and exp_id in listed.stdout and "queued" in listed.stdout

    cancel = ["experiments", "cancel", exp_id, "--groups", str(groups)]
    one_line_error(mlsys(*cancel, "--team", "b", home=home, token=token_b), "belongs to team 'a', not 'b'")
    assert HypothesisQueue(home / "teams").get(exp_id)["state"] == "queued"
    done = mlsys(*cancel, "--team", "a", home=home, token=token_a)
    assert done.returncode == 0 and "cancelled" in done.stdout

    tokens = mlsys("groups", "token", "list", home=home)
    assert tokens.returncode == 0 and token_a not in tokens.stdout and token_b not in tokens.stdout


def test_bad_resource_groups_are_refused_with_the_field_named(tmp_path: Path) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text("teams:\n  a:\n    quota: {cpu: 1, gpus: 1}\n")
    one_line_error(mlsys("groups", "validate", "--groups", str(groups), home=tmp_path), "teams.a.quota.gpus")
    ok = mlsys("groups", "validate", "--groups", "cluster/resource_groups.yaml", home=tmp_path)
    assert ok.returncode == 0 and "2 teams" in ok.stdout


@pytest.mark.integration
def test_groups_status_shows_use_against_quota_on_the_cluster(ray_cluster: str, tmp_path: Path) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text(GROUPS)
    home = tmp_path / "mlsys"
    address = ray.get_runtime_context().gcs_address
    try:
        out = mlsys("groups", "status", "--groups", str(groups), home=home, RAY_ADDRESS=address)
        assert out.returncode == 0, out.stderr[-3000:]
        for fragment in ("resource groups (give-back bound 20 s)", "quota CPU", "borrowed", "lent"):
            assert fragment in out.stdout
        rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 5}
        assert set(rows) >= {"a", "b"} and "│ 1 " in rows["a"]
        too_big = tmp_path / "big.yaml"
        too_big.write_text("teams:\n  a: {quota: {cpu: 99}}\n")
        one_line_error(
            mlsys("groups", "apply", "--groups", str(too_big), home=home, RAY_ADDRESS=address),
            "larger than the cluster",
        )
    finally:
        try:
            ray.kill(ray.get_actor(actor_name(home / "teams"), namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
