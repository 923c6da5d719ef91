"""``jobs/`` entrypoints submitted with the real ``ray job submit`` CLI to the session's cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

from ml_system.features import FeatureStore
from ml_system.usecases.flights.demo import DEMO_CUTOFF
from tests.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_materialize_job_attaches_to_the_running_cluster(flights_platform, tmp_path: Path) -> None:
    """The entrypoint as ``ray job submit`` runs it: a separate driver process attaching via RAY_ADDRESS.

    (The session cluster is started by ``ray.init``, whose job agent does not
    register reliably here; ``ray job submit`` itself is exercised against a
    ``ray start`` cluster as the README shows.)
    """
    home = tmp_path / "mlsys"  # a copy, so the session's demo state stays as it was
    shutil.copytree(flights_platform.config.home, home, ignore=shutil.ignore_patterns("ray_results"))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "MLSYS_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "jobs/materialize.py", "--end", "2013-12-30T18:00:00-05:00"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "weather:" in out.stdout and "online store" in out.stdout
    store = FeatureStore(make_config(home))
    row = store.get_online_features(["weather:temp"], [{"origin": "EWR"}], now=DEMO_CUTOFF.to_pydatetime())
    assert row.statuses["temp"] == ["present"]
    until = int(store.online.get_meta("materialized_until:weather") or 0)
    assert until == pd.Timestamp("2013-12-30T18:00:00-05:00").value


def test_job_rejects_a_naive_bound(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "jobs/materialize.py", "--end", "2013-12-30T18:00:00"],
        capture_output=True,
        text=True,
        env={**os.environ, "MLSYS_HOME": str(tmp_path), "RAY_ADDRESS": ""},
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 2 and "UTC offset" in out.stderr
