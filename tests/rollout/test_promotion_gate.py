"""The promotion gate and ``mlsys models promote``: training makes a challenger, the gate compares it with
the champion on the same held-out rows and records the result in MLflow; only a passing gate (or
``--force --reason``) moves ``champion``, only with a valid team token, and every attempt is audited."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import xgboost as xgb

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.pipelines import steps
from ml_system.rollout import gate
from ml_system.rollout.audit import AuditLog
from ml_system.training import mlflow_model, tracking, trainer
from ml_system.training.model_artifact import ModelSpec
from tests.cli.test_teams_cli import one_line_error
from tests.pipelines.conftest import TINY, tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MLSYS = [sys.executable, "-m", "ml_system.cli"]
MODEL = "tiny_failure"
GROUPS = "teams:\n  owners: {quota: {cpu: 1}}\n  others: {quota: {cpu: 1}}\n"


def tiny_home(home: Path) -> tuple[PlatformConfig, Path]:
    from ml_system.config import load_config

    home.mkdir(parents=True)
    (home / "groups.yaml").write_text(GROUPS)
    path = home / "mlsys.yaml"
    path.write_text(
        json.dumps(
            {
                "home": str(home),
                "usecases": {"tiny": TINY},
                "teams": {"resource_groups": str(home / "groups.yaml")},
                "rollout": {"owners": {"tiny": "owners"}},
            }
        )
    )
    config = load_config(path, environ={})
    steps.build_features(config, tiny(config))
    return config, path


def mlsys(*args: str, config_path: Path, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "MLSYS_CONFIG": str(config_path)}
    env.pop("MLSYS_TEAM_TOKEN", None)
    env.pop("MLSYS_HOME", None)
    if token is not None:
        env["MLSYS_TEAM_TOKEN"] = token
    return subprocess.run([*MLSYS, *args], capture_output=True, text=True, env=env, timeout=300)


def register_worse(config: PlatformConfig, ts: trainer.TrainingSet) -> str:
    """A real model trained on shuffled labels: it ranks nothing, and the gate must say so."""
    train = ts.split("train")
    rng = np.random.default_rng(1)
    label = rng.permutation(train[ts.label].to_numpy())
    booster = xgb.train(
        {"objective": "binary:logistic", "nthread": 1, "max_depth": 6},
        xgb.DMatrix(train[ts.features].to_numpy(np.float32), label=label, feature_names=ts.features),
        40,
    )
    spec = ModelSpec(list(ts.features), "tiny_v1", ts.label, "binary:logistic")
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow, MODEL)):
        logged = mlflow_model.log_model(booster, spec, input_example=train[ts.features].head(3))
    return mlflow_model.register_model(config.mlflow, logged, MODEL, tags={}, alias=tracking.CHALLENGER).version


def champion(config: PlatformConfig) -> str:
    return tracking.resolve(config.mlflow, MODEL, alias=tracking.CHAMPION).version


def test_the_gate_decides_promotion_and_every_attempt_is_audited(ray_cluster: str, tmp_path: Path) -> None:
    from ml_system.teams.groups import load_groups
    from ml_system.teams.identity import TokenStore

    config, config_path = tiny_home(tmp_path / "mlsys")
    usecase = tiny(config)
    groups = load_groups(config.teams.resource_groups)
    _, owner_token = TokenStore(config.teams.state_dir).issue("owners", groups)
    _, other_token = TokenStore(config.teams.state_dir).issue("others", groups)

    first = steps.train(config, usecase, num_samples=1, num_boost_round=20)
    assert first.alias == "champion"  # an empty registry: nothing to compare with
    second = steps.train(config, usecase, num_samples=1, num_boost_round=20)
    assert second.alias == "challenger" and champion(config) == first.model_version

    # the comparison is in MLflow: tags on the challenger's version, metrics on its run
    version = tracking.resolve(config.mlflow, MODEL, version=second.model_version)
    result = gate.recorded(version)
    assert result is not None and result.champion is not None
    assert (
        result.champion.version == first.model_version and version.tags["gate.champion_version"] == first.model_version
    )
    assert set(result.challenger.calibration) == {"brier", "ece"} and {"psi", "ks"} <= set(result.shift)
    run = tracking.client(config.mlflow).get_run(second.run_id)
    assert {"gate_challenger_auc", "gate_champion_auc", "gate_shift_psi", "gate_challenger_ece"} <= set(
        run.data.metrics
    )
    assert result.passed, result.reasons

    # no token, another team's token: refused, logged, nothing moves
    one_line_error(mlsys("models", "promote", "-u", "tiny", config_path=config_path, token=None), "no team token")
    one_line_error(mlsys("models", "promote", "-u", "tiny", config_path=config_path, token=other_token), "not 'owners'")
    assert champion(config) == first.model_version

    out = mlsys("models", "promote", "-u", "tiny", config_path=config_path, token=owner_token)
    assert out.returncode == 0, out.stderr
    assert f"champion v{first.model_version} -> v{second.model_version} by team owners" in out.stdout
    assert champion(config) == second.model_version

    # a challenger that ranks nothing fails the gate on the same held-out rows
    ts = trainer.build_training_set(FeatureStore(config), usecase)
    worse = register_worse(config, ts)
    failed = gate.evaluate_and_record(config, usecase, ts.split("test"), ts.label, worse)
    assert not failed.passed and any(r.startswith("auc") for r in failed.reasons), failed.reasons
    one_line_error(
        mlsys("models", "promote", "-u", "tiny", config_path=config_path, token=owner_token), "refused", "auc"
    )
    one_line_error(
        mlsys("models", "promote", "-u", "tiny", "--force", config_path=config_path, token=owner_token), "--reason"
    )
    assert champion(config) == second.model_version
    out = mlsys(
        "models", "promote", "-u", "tiny", "--force", "--reason", "incident 42: the old one is broken",
        config_path=config_path, token=owner_token,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert champion(config) == worse

    # and back: rollback moves champion to the version it replaced
    out = mlsys("models", "rollback", "-u", "tiny", "--reason", "worse", config_path=config_path, token=owner_token)
    assert out.returncode == 0, out.stderr
    assert champion(config) == second.model_version

    log = AuditLog(config.rollout.uri)
    entries = [(e.action, e.outcome, e.who) for e in log.entries("tiny")]
    assert entries == [
        ("promote", "refused", "unknown"),
        ("promote", "refused", "unknown"),
        ("promote", "done", "owners"),
        ("promote", "refused", "owners"),
        ("force_promote", "refused", "owners"),
        ("force_promote", "done", "owners"),
        ("rollback", "done", "owners"),
    ]
    forced = log.entries("tiny")[5]
    assert forced.reason == "incident 42: the old one is broken" and forced.to_version == worse and forced.at
    assert log.verify() == []
    out = mlsys("models", "audit", "-u", "tiny", config_path=config_path, token=None)
    assert out.returncode == 0 and "force_promote" in out.stdout

    # the log is append-only: editing an entry breaks the chain and `models audit` says so
    lines = log.path.read_text().splitlines()
    lines[2] = re.sub(r'"who": "owners"', '"who": "mallory"', lines[2])
    log.path.write_text("\n".join(lines) + "\n")
    assert log.verify() == [4]
    assert mlsys("models", "audit", "-u", "tiny", config_path=config_path, token=None).returncode == 1

    # rollouts through the CLI: a bad plan and a wrong token are refused before anything moves, one
    # rollout per use case at a time, a promotion waits for it, abort sends traffic back to the champion
    from ml_system.serving.route_plan import RoutePlanStore

    tracking.client(config.mlflow).set_registered_model_alias(MODEL, tracking.CHALLENGER, worse)
    bad = tmp_path / "bad.yaml"
    bad.write_text("usecase: tiny\nsteps: [10, 5, 100]\n")
    good = tmp_path / "canary.yaml"
    good.write_text("usecase: tiny\nsteps: [10, 50, 100]\nstep_s: 60\n")
    one_line_error(
        mlsys("rollout", "start", "-u", "tiny", "--plan", str(bad), config_path=config_path, token=owner_token),
        "field 'steps[1]': weight 5 does not increase on 10",
    )
    one_line_error(
        mlsys("rollout", "start", "-u", "tiny", "--plan", str(good), config_path=config_path, token=other_token),
        "not 'owners'",
    )
    plans = RoutePlanStore(config.rollout.uri)
    assert plans.read("tiny").strategy == "none"
    out = mlsys("rollout", "start", "-u", "tiny", "--plan", str(good), config_path=config_path, token=owner_token)
    assert (
        out.returncode == 0
        and f"canary of {MODEL} v{worse}" in out.stdout
        and "now at 10%" in out.stdout
        and "10 -> 50 -> 100 %" in out.stdout
    )
    plan = plans.read("tiny")
    assert (plan.strategy, plan.challenger_version, plan.weight) == ("canary", worse, 10.0)
    one_line_error(
        mlsys("rollout", "start", "-u", "tiny", "--plan", str(good), config_path=config_path, token=owner_token),
        "under way",
    )
    one_line_error(
        mlsys(
            "models", "promote", "-u", "tiny", "--force", "--reason", "x", config_path=config_path, token=owner_token
        ),
        "under way",
    )
    status = mlsys("rollout", "status", "-u", "tiny", config_path=config_path, token=None)
    assert status.returncode == 0 and "running, canary" in status.stdout and "at 10%" in status.stdout
    one_line_error(
        mlsys("rollout", "abort", "-u", "tiny", "--reason", "x", config_path=config_path, token=other_token),
        "not 'owners'",
    )
    out = mlsys("rollout", "abort", "-u", "tiny", "--reason", "on-call", config_path=config_path, token=owner_token)
    assert out.returncode == 0 and "aborted" in out.stdout
    assert plans.read("tiny").strategy == "none" and champion(config) == second.model_version
    actions = [(e.action, e.outcome, e.who) for e in AuditLog(config.rollout.uri).entries("tiny")][-7:]
    assert actions == [
        ("rollout_start", "refused", "owners"),  # the plan
        ("rollout_start", "refused", "unknown"),  # the token
        ("rollout_start", "done", "owners"),
        ("rollout_start", "refused", "owners"),  # a second one
        ("force_promote", "refused", "owners"),
        ("abort", "refused", "unknown"),
        ("abort", "done", "owners"),
    ]

    # the retraining pipeline's hook (`pipelines.canary`) starts a canary of the challenger it registered
    from ml_system.rollout.controller import start_from_pipeline
    from ml_system.rollout.state import RolloutStore

    said = start_from_pipeline(config, usecase, worse)
    running = RolloutStore(config.rollout.uri).active("tiny")
    assert running is not None and running.started_by == "pipeline" and running.challenger == worse, said
    assert plans.read("tiny").weight == 5.0 and AuditLog(config.rollout.uri).entries("tiny")[-1].who == "pipeline"
