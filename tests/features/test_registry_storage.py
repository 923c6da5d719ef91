"""What every registry storage backend must do, run against each one in the type table (a local
folder, S3 on moto's server over HTTP) and a backend loaded by class path: exclusive creates,
concurrent applies from real processes, a damaged version reported by name while the one before
it serves. Plus what only a folder has: file modes a team can share.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_system.config import REGISTRY_STORE_CLASS_FOR_TYPE, RegistryConfig, load_config
from ml_system.errors import ConfigError, StoreError
from ml_system.features import DeltaSource, Entity, FeatureView, Field
from ml_system.features.registry import Registry
from ml_system.features.registry.storage import LocalVersionStore, VersionStore, open_version_store, version_name
from tests.conftest import s3_options

driver = Entity("driver", ["driver_id"])
BACKENDS = [*sorted(REGISTRY_STORE_CLASS_FOR_TYPE), "plugin"]


class TeamFolderVersionStore(LocalVersionStore):
    """A backend outside the built-in table, named by class path in the config: it keeps versions in
    a folder named by its own config key."""

    def __init__(self, config: RegistryConfig, shared_paths: tuple[str, ...] = ()) -> None:
        super().__init__(config, shared_paths)  # type: ignore[arg-type]
        self.root = Path(config.uri) / str(config.folder)


def view(name: str, *fields: str) -> FeatureView:
    return FeatureView(name, [driver], [Field(f) for f in fields or ("x",)], DeltaSource(name), owner="team-a")


@pytest.fixture(params=BACKENDS)
def registry_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryConfig]:
    environ = {"MLSYS_HOME": str(tmp_path)}
    if request.param == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        environ["MLSYS_REGISTRY__URI"] = f"s3://{bucket}/registry"
        environ.update({f"MLSYS_REGISTRY__STORAGE_OPTIONS__{k}": v for k, v in s3_options(endpoint).items()})
    elif request.param == "plugin":
        environ["MLSYS_REGISTRY__TYPE"] = f"{__name__}.TeamFolderVersionStore"
        environ["MLSYS_REGISTRY__URI"] = str(tmp_path / "registry")
        environ["MLSYS_REGISTRY__FOLDER"] = "team_versions"
    config = load_config(environ=environ).registry
    assert config.type == request.param or request.param == "plugin"
    yield config


def test_each_backend_comes_from_its_table_entry(registry_config: RegistryConfig) -> None:
    store = open_version_store(registry_config)
    expected = REGISTRY_STORE_CLASS_FOR_TYPE.get(registry_config.type, registry_config.type)
    assert f"{type(store).__module__}.{type(store).__name__}" == expected


def test_a_version_is_created_once_and_read_back(registry_config: RegistryConfig) -> None:
    store = open_version_store(registry_config)
    assert store.latest() == 0
    assert store.create(1, b'{"a": 1}') is True
    assert store.create(1, b'{"a": 2}') is False  # the second writer loses, the first one's bytes stay
    assert store.read(1) == b'{"a": 1}' and store.latest() == 1
    assert version_name(1) in store.location(1)


def test_a_damaged_version_is_named_and_the_one_before_still_serves(
    registry_config: RegistryConfig, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(registry_config)
    reg.apply([driver, view("stats")], by="alice")
    reg.apply([view("other")], by="alice")
    full = reg.store.read(2)
    assert reg.store.create(3, full[: len(full) // 2])  # a copy cut short: a disk that filled up, a killed sync

    fresh = Registry(registry_config)
    with caplog.at_level(logging.WARNING):
        assert sorted(fresh.feature_views()) == ["other", "stats"]  # version 2 serves
        fresh.feature_views()
    damaged = fresh.store.location(3)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1  # told once
    assert damaged in caplog.text and fresh.corrupt_versions == [damaged]
    with pytest.raises(StoreError, match=version_name(3)):
        fresh.document(3)

    assert fresh.apply([view("third")], by="bob") == 4  # a new apply writes after the damaged number
    assert sorted(Registry(registry_config).feature_views()) == ["other", "stats", "third"]
    assert fresh.document()["created_by"] == "bob"


def _apply_many(config: RegistryConfig, who: str, count: int, start: mp.synchronize.Barrier) -> None:
    reg = Registry(config)
    start.wait()
    for i in range(count):
        reg.apply([FeatureView(f"{who}_{i}", [driver], [Field("x")], DeltaSource("t"), owner=who)], by=who)


def test_two_processes_apply_concurrently(registry_config: RegistryConfig) -> None:
    Registry(registry_config).apply([driver], by="setup")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    count = 6
    procs = [ctx.Process(target=_apply_many, args=(registry_config, who, count, barrier)) for who in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    reg = Registry(registry_config)
    assert sorted(reg.feature_views()) == sorted(f"{w}_{i}" for w in ("p1", "p2") for i in range(count))
    assert reg.version == 1 + 2 * count  # every apply is its own version, none lost or merged
    authors = [reg.document(v)["created_by"] for v in range(2, reg.version + 1)]
    assert sorted(authors) == ["p1"] * count + ["p2"] * count


# ---- a folder shared by a team -----------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_versions_in_a_folder_follow_the_umask_like_any_file(tmp_path: Path, umask: int, mode: int) -> None:
    """Another member of the group must be able to read what the last writer wrote."""
    previous = os.umask(umask)
    try:
        reg = Registry(str(tmp_path / "registry"))
        reg.apply([driver, view("stats")], by="alice")
    finally:
        os.umask(previous)
    written = Path(reg.store.location(1))
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".pending")]


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"MLSYS_REGISTRY__URI": "gs://bucket/registry"}, "no backend for 'gs://'"),
        ({"MLSYS_REGISTRY__TYPE": "s3", "MLSYS_REGISTRY__URI": "/srv/registry"}, "registry.uri"),
        ({"MLSYS_REGISTRY__TYPE": "nosuch"}, "registry.type"),
        ({"MLSYS_REGISTRY__TYPE": "tests.features.nosuch.Store", "MLSYS_REGISTRY__URI": "/x"}, "cannot be imported"),
    ],
)
def test_a_registry_no_backend_serves_fails_when_the_config_is_loaded(
    tmp_path: Path, environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(environ={"MLSYS_HOME": str(tmp_path), **environ})


def test_a_class_path_that_is_no_version_store_is_refused_when_opened(tmp_path: Path) -> None:
    config = load_config(
        environ={"MLSYS_HOME": str(tmp_path), "MLSYS_REGISTRY__TYPE": "pathlib.Path", "MLSYS_REGISTRY__URI": "/x"}
    ).registry
    with pytest.raises(ConfigError, match="not a VersionStore"):
        open_version_store(config)
    assert issubclass(TeamFolderVersionStore, VersionStore)
