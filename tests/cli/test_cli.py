"""The ``mlsys`` command as a user runs it: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MLSYS = [sys.executable, "-m", "ml_system.cli"]


def mlsys(*args: str, home: Path | str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "MLSYS_HOME": str(home)}
    return subprocess.run([*MLSYS, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    out = mlsys("--help", home=tmp_path)
    assert out.returncode == 0
    for command in ("quickstart", "train", "features", "models"):
        assert command in out.stdout


def test_unknown_view_fails_with_one_line(tmp_path: Path) -> None:
    out = mlsys("features", "describe", "nope", home=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0
    assert "nope" in out.stderr and "Traceback" not in out.stderr


def test_naive_materialization_bound_is_a_usage_error(tmp_path: Path) -> None:
    out = mlsys("features", "materialize", "--end", "2013-12-30T17:00:00", home=tmp_path)
    assert out.returncode == 2
    assert "offset" in out.stderr


def test_bad_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "mlsys.yaml"
    cfg.write_text("online_store:\n  type: memcached\n")
    out = mlsys("features", "list", "--config", str(cfg), home=tmp_path)
    assert out.returncode == 1
    assert "online_store.type" in out.stderr


def test_apply_list_describe_on_a_fresh_home(tmp_path: Path) -> None:
    applied = mlsys("features", "apply", home=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "registry version 1" in applied.stdout
    listed = mlsys("features", "list", home=tmp_path)
    assert listed.returncode == 0
    for view in ("weather", "planes", "carrier_stats", "origin_stats", "route_stats"):
        assert view in listed.stdout
    described = mlsys("features", "describe", "weather", home=tmp_path)
    assert described.returncode == 0 and "wind_speed" in described.stdout and "flight-delay-team" in described.stdout
    bad = mlsys("features", "apply", "-m", "no.such.module", home=tmp_path)
    assert bad.returncode == 1 and "no.such.module" in bad.stderr


@pytest.mark.integration
def test_models_list_shows_the_champion(flights_platform) -> None:
    out = mlsys("models", "list", home=flights_platform.config.home)
    assert out.returncode == 0, out.stderr
    assert "flight_delay" in out.stdout and "champion" in out.stdout
    assert flights_platform.report.model_version in out.stdout


def test_quickstart_refuses_a_busy_port_before_doing_any_work(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = mlsys("quickstart", "--port", str(port), home=tmp_path)
    assert out.returncode == 1
    assert f"port {port}" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "offline").exists()


def test_a_long_error_stays_on_one_line(tmp_path: Path) -> None:
    """Rich wraps piped output at 160 columns; an error naming a long path or name must not be cut in two."""
    name = "a_view_with_a_rather_long_name_" * 8
    out = mlsys("features", "describe", name, home=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and name in out.stderr
