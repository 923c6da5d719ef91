"""Configuration: YAML, environment overrides, absolute paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_system.config import load_config
from ml_system.errors import ConfigError


def test_defaults_resolve_under_home(tmp_path: Path) -> None:
    cfg = load_config(environ={"MLSYS_HOME": str(tmp_path)})
    assert cfg.home == str(tmp_path)
    assert cfg.offline_store.uri == str(tmp_path / "offline")
    assert cfg.online_store.type == "sqlite" and cfg.online_store.path == str(tmp_path / "online.db")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_yaml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlsys.yaml").write_text(
        "home: ./state\nonline_store:\n  type: redis\n  redis_url: redis://a:1/0\nserving:\n  port: 9000\n"
    )
    cfg = load_config(environ={"MLSYS_ONLINE_STORE__REDIS_URL": "redis://b:2/0", "MLSYS_SERVING__PORT": "9100"})
    assert cfg.home == str(tmp_path / "state")  # relative paths become absolute
    assert cfg.online_store.type == "redis" and cfg.online_store.redis_url == "redis://b:2/0"
    assert cfg.serving.port == 9100
    assert cfg.offline_store.uri == str(tmp_path / "state" / "offline")


def test_s3_locations_stay_uris(tmp_path: Path) -> None:
    cfg = load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_OFFLINE_STORE__URI": "s3://bucket/features"})
    assert cfg.offline_store.uri == "s3://bucket/features"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("online_store:\n  type: memcached\n", "online_store.type"),
        ("serving:\n  port: eighty\n", "serving.port"),
        ("unknown_section: 1\n", "unknown_section"),
        ("- a list\n", "mapping"),
        ("a: [unclosed\n", "YAML"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path, environ={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})
