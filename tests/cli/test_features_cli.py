"""`mlsys features` end to end through the real CLI: plan, apply, list, describe,
lifecycle, lineage with consumers synced from MLflow (sqlite), and online snapshots."""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from ml_system.cli import main
from ml_system.cli.main import app
from ml_system.features import FeatureStore
from ml_system.training import tracking
from tests.conftest import make_config

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables fold long cells at the 80 columns a non-terminal gets; assertions want whole names."""
    monkeypatch.setattr(main.console, "width", 200)


DEFS = """
from datetime import timedelta
from ml_system.features import DeltaSource, Entity, FeatureService, FeatureView, Field

driver = Entity("driver", ["driver_id"])
stats = FeatureView("stats", [driver], [Field("rate"){extra}], DeltaSource("stats"), ttl=timedelta(hours={ttl}),
                    owner="team-a", description="driver stats")
svc = FeatureService("svc", ["stats:rate"])
"""


def write_defs(folder: Path, name: str, ttl: int = 1, extra: str = "") -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(DEFS.format(ttl=ttl, extra=extra)))
    return name


def mlsys(home: Path, *args: str) -> str:
    result = runner.invoke(app, [*args[:2], *args[2:], "--home", str(home)] if args else [])
    assert result.exit_code == 0, result.output
    return result.output


def test_plan_apply_lifecycle_and_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    home = tmp_path / "mlsys"
    v1 = write_defs(tmp_path, "defs_v1")
    assert "+ feature_view stats" in mlsys(home, "features", "plan", "-m", v1)
    assert "registry version 1" in mlsys(home, "features", "apply", "-m", v1, "--by", "alice")
    assert "no changes" in mlsys(home, "features", "apply", "-m", v1)

    v2 = write_defs(tmp_path, "defs_v2", ttl=2, extra=', Field("trips")')
    plan = mlsys(home, "features", "plan", "-m", v2)
    assert "~ feature_view stats" in plan and "ttl_seconds: 3600.0 -> 7200.0" in plan
    assert "schema.trips added ('float64')" in plan
    mlsys(home, "features", "apply", "-m", v2, "--by", "bob")

    # a model version trained on the service, registered in MLflow and synced into the registry
    config = make_config(home)
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow)) as run:
        mlflow.log_text("{}", "model/model.json")
    tracking.register_model(config.mlflow, "delay", run.info.run_id, "model", tags={"feature_service": "svc"})
    assert "recorded 1" in mlsys(home, "features", "sync-consumers")
    assert "delay v1" in mlsys(home, "features", "lineage", "stats")
    listing = mlsys(home, "features", "list")
    assert "team-a" in listing and "delay v1" in listing and "active" in listing

    mlsys(home, "features", "lifecycle", "stats", "deprecated", "--by", "carol", "--reason", "v3 soon")
    refused = runner.invoke(app, ["features", "lifecycle", "stats", "retired", "--by", "carol", "--home", str(home)])
    assert refused.exit_code == 1 and "delay v1" in refused.output
    described = mlsys(home, "features", "describe", "stats")
    assert "carol" in described and "v3 soon" in described and "deprecated" in described

    tracking.client(config.mlflow).transition_model_version_stage("delay", "1", "Archived")
    assert "archived 1" in mlsys(home, "features", "sync-consumers")
    lineage = mlsys(home, "features", "lineage")
    assert "delay v1" in lineage  # still shown, under archived models
    assert FeatureStore(config).registry.consumers("stats") == []


def rate(store: FeatureStore) -> list[float | None]:
    now = pd.Timestamp("2024-01-01 00:30", tz="UTC").to_pydatetime()  # within the view's 1 h TTL
    return store.get_online_features(["stats:rate"], [{"driver_id": 1}], now=now).values["rate"]


@pytest.mark.usefixtures("ray_cluster")
def test_snapshot_load_activate_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    home = tmp_path / "mlsys"
    store = FeatureStore(make_config(home))
    stamp = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame({"driver_id": [1], "event_timestamp": [stamp], "created_timestamp": [stamp], "rate": [0.5]})
    store.offline.write_pandas("stats", frame, mode="overwrite")
    mlsys(home, "features", "apply", "-m", write_defs(tmp_path, "defs_snap"))
    out = mlsys(home, "features", "snapshot", "load", "--end", "2024-01-02T00:00:00+00:00")
    sid = out.split("loaded snapshot ")[1].split()[0]
    assert rate(store) == [None]
    assert f"serving snapshot {sid}" in mlsys(home, "features", "snapshot", "activate", sid)
    assert rate(store) == [0.5]
    assert sid in mlsys(home, "features", "snapshot", "list")
    assert "serving base" in mlsys(home, "features", "snapshot", "rollback")
    assert rate(store) == [None]
    failed = runner.invoke(app, ["features", "snapshot", "rollback", "--home", str(home)])
    assert failed.exit_code == 1 and "roll back" in failed.output
