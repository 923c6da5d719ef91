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


# ---- backends picked by type -------------------------------------------------------------------


def test_each_location_picks_its_backend_from_the_type_table(tmp_path: Path) -> None:
    from ml_system.config import OFFLINE_STORE_CLASS_FOR_TYPE
    from ml_system.features.offline import open_offline_store

    local = load_config(environ={"MLSYS_HOME": str(tmp_path)})
    s3 = load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_OFFLINE_STORE__URI": "s3://bucket/features"})
    assert (local.offline_store.type, s3.offline_store.type) == ("file", "s3")  # from the scheme
    for config in (local, s3):
        store = open_offline_store(config.offline_store)
        path = f"{type(store).__module__}.{type(store).__name__}"
        assert path == OFFLINE_STORE_CLASS_FOR_TYPE[config.offline_store.type]
    assert load_config(environ={"MLSYS_HOME": str(tmp_path), "MLSYS_REGISTRY__URI": "s3a://b/r"}).registry.type == "s3"


def test_env_overrides_reach_a_backend_s_own_fields(tmp_path: Path) -> None:
    cfg = load_config(
        environ={
            "MLSYS_HOME": str(tmp_path),
            "MLSYS_OFFLINE_STORE__URI": "s3://bucket/features",
            "MLSYS_OFFLINE_STORE__STORAGE_OPTIONS__AWS_REGION": "eu-west-1",
            "MLSYS_RAY__SHARED_PATHS": f"{tmp_path / 'nfs'}:{tmp_path / 'lustre'}",
        }
    )
    assert cfg.offline_store.storage_options == {"AWS_REGION": "eu-west-1"}  # type: ignore[union-attr]
    assert cfg.ray.shared_paths == [str(tmp_path / "nfs"), str(tmp_path / "lustre")]
    assert cfg.ray.is_shared(str(tmp_path / "nfs" / "offline")) and not cfg.ray.is_shared(str(tmp_path / "nfsx"))


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"MLSYS_OFFLINE_STORE__URI": "gs://bucket/features"}, "no backend for 'gs://'"),
        ({"MLSYS_OFFLINE_STORE__TYPE": "s3"}, "offline_store.uri"),  # s3 without a bucket
        ({"MLSYS_OFFLINE_STORE__TYPE": "s3", "MLSYS_OFFLINE_STORE__URI": "/data/features"}, "s3://bucket/prefix"),
        ({"MLSYS_OFFLINE_STORE__TYPE": "file", "MLSYS_OFFLINE_STORE__URI": "s3://b/f"}, "local path"),
        ({"MLSYS_OFFLINE_STORE__TYPE": "delta"}, "offline_store.type"),
        ({"MLSYS_OFFLINE_STORE__URI": "/data", "MLSYS_OFFLINE_STORE__STORAGE_OPTIONS__A": "b"}, "storage_options"),
    ],
)
def test_an_offline_store_no_backend_serves_fails_when_loaded(
    tmp_path: Path, environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(environ={"MLSYS_HOME": str(tmp_path), **environ})


def test_a_backend_outside_the_package_is_named_by_class_path(tmp_path: Path) -> None:
    from ml_system.features.offline import open_offline_store
    from ml_system.features.offline.local import LocalDeltaStore

    cfg = load_config(
        environ={
            "MLSYS_HOME": str(tmp_path),
            "MLSYS_OFFLINE_STORE__TYPE": "ml_system.features.offline.local.LocalDeltaStore",
            "MLSYS_OFFLINE_STORE__URI": str(tmp_path / "elsewhere"),
        }
    )
    assert isinstance(open_offline_store(cfg.offline_store), LocalDeltaStore)


# ---- the online store's backend table -------------------------------------------------------------


def test_the_online_backend_table_and_the_config_models_agree() -> None:
    from ml_system.config import BUILTIN_ONLINE_STORES
    from ml_system.features.online import ONLINE_STORE_CLASS_FOR_TYPE, online_store_class

    assert set(BUILTIN_ONLINE_STORES) == set(ONLINE_STORE_CLASS_FOR_TYPE)
    for kind in BUILTIN_ONLINE_STORES:
        cfg = load_config(environ={"MLSYS_HOME": "/tmp/h", "MLSYS_ONLINE_STORE__TYPE": kind})
        assert cfg.online_store.type == kind
        assert online_store_class(kind).__name__.lower().startswith(kind)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MLSYS_ONLINE_STORE__TYPE": "redis", "MLSYS_ONLINE_STORE__PATH": "/x.db"}, "online_store.path"),
        ({"MLSYS_ONLINE_STORE__REDIS_URL": "redis://a:1/0"}, "online_store.redis_url"),  # sqlite has none
        ({"MLSYS_ONLINE_STORE__READ_TIMEOUT_S": "0"}, "online_store.read_timeout_s"),
        ({"MLSYS_ONLINE_STORE__TYPE": "redis", "MLSYS_ONLINE_STORE__FAST_READ_LINK": "maybe"}, "fast_read_link"),
        ({"MLSYS_ONLINE_STORE__TYPE": "no_such.module.Store"}, "cannot be imported"),
        ({"MLSYS_ONLINE_STORE__TYPE": "tests.features.custom_backend.NoConfigStore"}, "no config_model"),
        (
            {
                "MLSYS_ONLINE_STORE__TYPE": "tests.features.custom_backend.LabelledSqliteStore",
                "MLSYS_ONLINE_STORE__PATH": "/x",
            },
            "label",
        ),
    ],
)
def test_a_bad_online_store_config_fails_when_loaded(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(environ={"MLSYS_HOME": "/tmp/h", **env})


def test_env_overrides_pick_and_tune_the_backend(tmp_path: Path) -> None:
    env = {"MLSYS_HOME": str(tmp_path), "MLSYS_ONLINE_STORE__TYPE": "redis"}
    cfg = load_config(environ={**env, "MLSYS_ONLINE_STORE__FAST_READ_LINK": "false"})
    assert cfg.online_store.type == "redis" and cfg.online_store.fast_read_link is False
    assert cfg.online_store.read_timeout_s == 0.5


def test_a_backend_outside_the_package_is_named_by_its_class_path(tmp_path: Path) -> None:
    from ml_system.features.online import open_online_store
    from tests.features.custom_backend import LabelledSqliteStore

    cfg = load_config(
        environ={
            "MLSYS_HOME": str(tmp_path),
            "MLSYS_ONLINE_STORE__TYPE": "tests.features.custom_backend.LabelledSqliteStore",
            "MLSYS_ONLINE_STORE__PATH": str(tmp_path / "custom.db"),
            "MLSYS_ONLINE_STORE__LABEL": "team-a",
        }
    )
    store = open_online_store(cfg.online_store)
    assert isinstance(store, LabelledSqliteStore) and store.label == "team-a"
    store.write_batch("stats", [("1", 1, 1, [0.5])], fields=["rate"])
    assert store.read("stats", ["1"])[0].values == [0.5]  # type: ignore[union-attr]
    store.close()


def test_a_builtin_backend_can_be_named_by_its_class_path_too(tmp_path: Path) -> None:
    from ml_system.features.online import open_online_store
    from ml_system.features.online.sqlite import SqliteOnlineStore

    cfg = load_config(
        environ={
            "MLSYS_HOME": str(tmp_path),
            "MLSYS_ONLINE_STORE__TYPE": "ml_system.features.online.sqlite.SqliteOnlineStore",
            "MLSYS_ONLINE_STORE__PATH": str(tmp_path / "o.db"),
        }
    )
    store = open_online_store(cfg.online_store)
    assert isinstance(store, SqliteOnlineStore) and store.path == str(tmp_path / "o.db")
    store.close()
