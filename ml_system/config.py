"""Platform configuration: one typed object, read in one place.

Values come from (lowest to highest precedence) the defaults below, a YAML file
(``--config`` / ``MLSYS_CONFIG`` / ``./mlsys.yaml``) and ``MLSYS_<SECTION>__<FIELD>``
environment variables, as Metaflow reads ``METAFLOW_*``. Paths default under
``MLSYS_HOME`` (``~/.mlsys``) and are made absolute, because ``ray job submit``
runs entrypoints in a temporary copy of the working directory where a relative
path would silently point at a throw-away folder.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ml_system.config_pipelines import PipelinesConfig
from ml_system.config_rollout import RolloutSettings
from ml_system.config_streaming import StreamingConfig
from ml_system.errors import ConfigError

ENV_PREFIX = "MLSYS_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(_Section):
    address: str | None = None
    """Cluster to attach to (``auto``, ``ray://...``); None starts a local one
    unless ``RAY_ADDRESS`` is set."""
    num_cpus: int | None = None
    object_store_memory: int = 1_000_000_000
    dashboard_host: str = "127.0.0.1"
    shared_paths: list[str] = Field(default_factory=list)
    """Local paths mounted at the same place on every node (NFS, EFS, Lustre): stores under them are
    accepted on a multi-node cluster. ``MLSYS_RAY__SHARED_PATHS`` takes them ``:``-separated, like ``PATH``."""
    storage_uri: str = ""
    """Where Ray Tune keeps trials and their checkpoints (default ``<home>/ray_results``). On more than one
    node, a location every node reaches: ``s3://bucket/prefix``, or a path under ``shared_paths``."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    """``AWS_*`` keys for an ``s3://`` ``storage_uri``, as the offline store takes them."""

    @field_validator("shared_paths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(os.pathsep) if part]
        return [str(Path(p).expanduser().resolve()) for p in value] if isinstance(value, list) else value

    @field_validator("storage_options")
    @classmethod
    def _upper_keys(cls, options: dict[str, str]) -> dict[str, str]:
        return {key.upper(): value for key, value in options.items()}

    def is_shared(self, path: str) -> bool:
        return any(Path(path).resolve().is_relative_to(root) for root in self.shared_paths)


# ---- backends picked by type ------------------------------------------------------------------
# As in Feast's ``repo_config.py``: a section's ``type`` names a backend in a table of import paths
# (loaded lazily by ``ml_system.features``, so this module imports none of the engine), and each
# backend has its own config class here, so a bad value fails when the file is loaded. A dotted
# ``type`` is a class path outside the package. Without ``type`` the location's scheme picks it.

TYPE_FOR_SCHEME: dict[str, str] = {"": "file", "file": "file", "s3": "s3", "s3a": "s3"}

OFFLINE_STORE_CLASS_FOR_TYPE: dict[str, str] = {
    "file": "ml_system.features.offline.local.LocalDeltaStore",
    "s3": "ml_system.features.offline.s3.S3DeltaStore",
}
REGISTRY_STORE_CLASS_FOR_TYPE: dict[str, str] = {
    "file": "ml_system.features.registry.storage.LocalVersionStore",
    "s3": "ml_system.features.registry.storage.S3VersionStore",
}


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


class _Backend(_Section):
    """What every backend of a section has: its type and where its data lives."""

    type: str
    uri: str = ""

    @property
    def local_path(self) -> str | None:
        """The path on this machine's disk the backend keeps its state under; None for remote storage."""
        return None


class _LocalBackend(_Backend):
    type: Literal["file"] = "file"

    @field_validator("uri")
    @classmethod
    def _plain_path(cls, uri: str) -> str:
        if scheme_of(uri) not in ("", "file"):
            raise ValueError(f"type 'file' takes a local path, not '{uri}'")
        return uri.removeprefix("file://")

    @property
    def local_path(self) -> str | None:
        return self.uri


class _S3Backend(_Backend):
    type: Literal["s3"] = "s3"
    uri: str
    storage_options: dict[str, str] = Field(default_factory=dict)
    """``AWS_*`` keys as deltalake takes them (``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...)."""

    @field_validator("uri")
    @classmethod
    def _s3_uri(cls, uri: str) -> str:
        if scheme_of(uri) not in ("s3", "s3a") or not uri.split("://", 1)[1].strip("/"):
            raise ValueError(f"type 's3' takes s3://bucket/prefix, not '{uri}'")
        return uri

    @field_validator("storage_options")
    @classmethod
    def _upper_keys(cls, options: dict[str, str]) -> dict[str, str]:
        # env overrides arrive lower-cased (MLSYS_..._STORAGE_OPTIONS__AWS_REGION -> aws_region)
        return {key.upper(): value for key, value in options.items()}


class _PluginBackend(_Backend):
    """A backend outside the package: ``type`` is its class path; other keys go to that class."""

    model_config = ConfigDict(extra="allow")

    @field_validator("type")
    @classmethod
    def _importable(cls, path: str) -> str:
        import_class(path, "one of the built-in types")
        return path


def import_class(path: str, builtins: str) -> type:
    """A backend class named by its import path; config names the engine only as strings."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"unknown type '{path}': use {builtins} or a class path (package.module.Class)")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        raise ValueError(f"backend class '{path}' cannot be imported: {exc}") from exc
    if not isinstance(found, type):
        raise ValueError(f"'{path}' names no class")
    return found


class OfflineStoreConfig(_Backend):
    """Base of the offline store's backend configs (``type``: ``file``, ``s3`` or a class path)."""


class LocalOfflineStoreConfig(_LocalBackend, OfflineStoreConfig):
    """Delta tables under a path: this machine's disk, or a mount listed in ``ray.shared_paths``."""


class S3OfflineStoreConfig(_S3Backend, OfflineStoreConfig):
    """Delta tables on S3. Commits are conditional puts (``If-None-Match: *`` on the log entry),
    which is what keeps concurrent writers from overwriting each other's commits."""

    @field_validator("storage_options")
    @classmethod
    def _safe_commits(cls, options: dict[str, str]) -> dict[str, str]:
        options = {key.upper(): value for key, value in options.items()}
        if options.get("AWS_S3_ALLOW_UNSAFE_RENAME", "").lower() in ("true", "1", "yes"):
            raise ValueError(
                "AWS_S3_ALLOW_UNSAFE_RENAME=true opts out of safe concurrent commits; remove it (deltalake commits "
                "to S3 with conditional puts, which S3 and MinIO support)"
            )
        return options


class PluginOfflineStoreConfig(_PluginBackend, OfflineStoreConfig):
    model_config = ConfigDict(extra="allow")


class RegistryConfig(_Backend):
    """Base of the registry storage configs: the folder of numbered versions (default ``<home>/registry``)."""


class LocalRegistryConfig(_LocalBackend, RegistryConfig):
    pass


class S3RegistryConfig(_S3Backend, RegistryConfig):
    """Same ``AWS_*`` keys as the offline store's, so one set of credentials serves both."""


class PluginRegistryConfig(_PluginBackend, RegistryConfig):
    model_config = ConfigDict(extra="allow")


def _with_type(value: Any) -> Any:
    """Fill ``type`` from the scheme, and refuse a location no backend is known for."""
    if isinstance(value, dict) and not value.get("type"):
        scheme = scheme_of(str(value.get("uri") or ""))
        if scheme not in TYPE_FOR_SCHEME:
            raise ValueError(f"no backend for '{scheme}://' locations; set type to one of file, s3 or a class path")
        value = {**value, "type": TYPE_FOR_SCHEME[scheme]}
    return value


def _backend_tag(value: Any) -> str:
    """Which member validates a section: its built-in type, or ``plugin`` for a class path."""
    given = value.type if isinstance(value, _Backend) else value.get("type") if isinstance(value, dict) else None
    return given if given in ("file", "s3") else "plugin"


def _section(file: type[_Backend], s3: type[_Backend], plugin: type[_Backend]) -> Any:
    """A section whose config class follows its ``type`` (given, or implied by the location)."""
    members = Annotated[file, Tag("file")] | Annotated[s3, Tag("s3")] | Annotated[plugin, Tag("plugin")]
    return Annotated[members, Discriminator(_backend_tag), BeforeValidator(_with_type)]


OfflineStoreSection = _section(LocalOfflineStoreConfig, S3OfflineStoreConfig, PluginOfflineStoreConfig)
RegistrySection = _section(LocalRegistryConfig, S3RegistryConfig, PluginRegistryConfig)


class OnlineStoreBaseConfig(_Section):
    """What every online store's config has; a backend's own config model extends it."""

    read_timeout_s: float = Field(0.5, gt=0, le=60)
    """Deadline of every online read and meta read: a store that does not answer in time raises
    ``StoreUnavailableError`` (serving answers 503) instead of holding the request."""
    write_timeout_s: float = Field(30.0, gt=0)
    """Deadline of each write, delete and admin command (a batch of up to 1,000 rows)."""


class SqliteOnlineStoreConfig(OnlineStoreBaseConfig):
    type: Literal["sqlite"] = "sqlite"
    path: str = ""
    """The database file (default ``<home>/online.db``)."""


class RedisOnlineStoreConfig(OnlineStoreBaseConfig):
    type: Literal["redis"] = "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_read_spin_us: int = Field(100, ge=0, le=10_000)
    """How long a lookup polls its socket for Redis' reply before sleeping (0: never). Waking a
    sleeping thread cost more than the round trip itself here; a remote Redis that never answers
    within the spin makes the reader stop spinning for a while (``online/resp.py``)."""
    fast_read_link: bool = True
    """Reads on the store's own RESP link (spin-then-sleep, no per-command machinery); false reads
    through redis-py's connection. ``benchmarks/online_lookup.py`` measures both."""


class CustomOnlineStoreConfig(OnlineStoreBaseConfig):
    """A backend outside the package: ``type`` is the class's import path, the other keys are its
    own. They are checked against the class's ``config_model`` when the config is loaded."""

    model_config = ConfigDict(extra="allow")
    type: str

    @field_validator("type")
    @classmethod
    def _importable(cls, value: str) -> str:
        _backend_class(value)
        return value

    @model_validator(mode="after")
    def _check_settings(self) -> CustomOnlineStoreConfig:
        self.backend_settings()
        return self

    def backend_settings(self) -> BaseModel:
        """These settings as the backend's own config model (which needs no ``type`` field)."""
        settings = {k: v for k, v in self.model_dump().items() if k != "type"}
        return _backend_class(self.type).config_model.model_validate(settings)


def _backend_class(path: str) -> Any:
    """An online store class named by path, with the ``config_model`` its settings are checked against."""
    cls = import_class(path, " or ".join(BUILTIN_ONLINE_STORES))
    if getattr(cls, "config_model", None) is None:
        raise ValueError(f"online store class '{path}' has no config_model to check its settings with")
    return cls


BUILTIN_ONLINE_STORES = ("sqlite", "redis")


def _online_kind(value: Any) -> str:
    kind = value.get("type", "sqlite") if isinstance(value, dict) else getattr(value, "type", "sqlite")
    return kind if kind in BUILTIN_ONLINE_STORES else "custom"


OnlineStoreConfig = Annotated[
    Annotated[SqliteOnlineStoreConfig, Tag("sqlite")]
    | Annotated[RedisOnlineStoreConfig, Tag("redis")]
    | Annotated[CustomOnlineStoreConfig, Tag("custom")],
    Discriminator(_online_kind),
]
"""The online store's config, chosen by ``type`` when the config is validated; the class that
opens it comes from the table in ``ml_system.features.online`` (config imports none of the engine)."""
_UNION_TAGS = {"sqlite", "redis", "custom"}


class FeaturesConfig(_Section):
    max_future_skew_s: float = Field(300.0, ge=0)
    """How far past this machine's clock an event time may lie (a pushed row, a materialization
    ``end``). Rows from the future would win every later upsert for their key, so they are refused."""
    snapshot_heartbeat_s: float = Field(30.0, gt=0)
    """How often a snapshot load records that its process is alive."""
    snapshot_abandoned_after_s: float = Field(600.0, gt=0)
    """A load whose heartbeat is older than this is abandoned (its process died): ``snapshot gc`` reclaims it."""


class MlflowConfig(_Section):
    tracking_uri: str = ""
    artifact_location: str = ""
    experiment: str = ""
    """MLflow experiment of training runs; empty: one experiment per model, named after it."""


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_rows_per_request: int = 1000


class TeamsConfig(_Section):
    resource_groups: str = "cluster/resource_groups.yaml"
    """Teams, quotas and priorities (``docs/teams.md``); a relative path is read from the working directory."""
    state_dir: str = ""
    """Admission ledger, experiment queue and token hashes (default ``<home>/teams``)."""
    access: Literal["auto", "enforce", "open"] = "auto"
    """Whether changes to team-owned resources need the team's token (``docs/security.md``): ``auto``
    enforces once any team token exists, ``enforce`` always, ``open`` never (a single-user platform)."""


class PlatformConfig(_Section):
    home: str = ""
    usecases: dict[str, str] = Field(default_factory=dict)
    """Extra or replacement use cases, ``name: package.module:attribute``, over the built-in table."""
    ray: RayConfig = Field(default_factory=RayConfig)
    offline_store: OfflineStoreSection = Field(default_factory=LocalOfflineStoreConfig)
    registry: RegistrySection = Field(default_factory=LocalRegistryConfig)
    online_store: OnlineStoreConfig = Field(default_factory=SqliteOnlineStoreConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    pipelines: PipelinesConfig = Field(default_factory=PipelinesConfig)
    teams: TeamsConfig = Field(default_factory=TeamsConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)

    def resolved(self) -> PlatformConfig:
        """Fill every empty location from ``home`` and make local paths absolute."""
        home = Path(self.home or os.environ.get("MLSYS_HOME") or Path.home() / ".mlsys")
        home = home.expanduser().resolve()
        data = self.model_dump()
        data["home"] = str(home)
        # an empty location (the default, or ``--home`` resetting every location) is a folder under home
        for section, folder in (("offline_store", "offline"), ("registry", "registry")):
            if not data[section]["uri"]:
                data[section] = {"type": "file", "uri": str(home / folder)}
            elif data[section]["type"] == "file":
                data[section]["uri"] = _absolute(data[section]["uri"])
        on = data["online_store"]
        if on["type"] == "sqlite":
            on["path"] = _absolute(on["path"] or str(home / "online.db"))
        ml = data["mlflow"]
        ml["tracking_uri"] = ml["tracking_uri"] or f"sqlite:///{home / 'mlflow.db'}"
        ml["artifact_location"] = _absolute(ml["artifact_location"] or str(home / "mlartifacts"))
        data["ray"]["storage_uri"] = _absolute(data["ray"]["storage_uri"] or str(home / "ray_results"))
        data["pipelines"]["uri"] = _absolute(data["pipelines"]["uri"] or str(home / "pipelines"))
        teams = data["teams"]
        teams["resource_groups"] = _absolute(teams["resource_groups"])
        teams["state_dir"] = _absolute(teams["state_dir"] or str(home / "teams"))
        data["rollout"]["uri"] = _absolute(data["rollout"]["uri"] or str(home / "rollout"))
        return PlatformConfig.model_validate(data)

    def node_local_locations(self, parts: Iterable[str]) -> list[str]:
        """Which of ``parts`` (``offline_store``, ``registry``, ``online_store``, ``mlflow``, ``ray_storage``,
        ``home``) keep their state on one machine's disk: a local path outside ``ray.shared_paths``, or an SQLite file
        (SQLite's locking is not safe on network filesystems, so a shared path does not help it)."""
        found: list[str] = []

        def local(name: str, path: str | None) -> None:
            if path is not None and not self.ray.is_shared(path):
                found.append(f"{name} {path}")

        for part in parts:
            if part in ("offline_store", "registry"):
                local(f"{part}.uri", getattr(self, part).local_path)
            elif part == "online_store" and self.online_store.type == "sqlite":
                found.append(f"online_store (sqlite) {self.online_store.path}")
            elif part == "home":
                local("home", self.home)
            elif part == "ray_storage" and scheme_of(self.ray.storage_uri) in ("", "file"):
                local("ray.storage_uri", self.ray.storage_uri.removeprefix("file://"))
            elif part == "pipelines":
                local("pipelines.uri", self.pipelines.local_path)
            elif part == "mlflow":
                if self.mlflow.tracking_uri.startswith("sqlite:"):
                    local("mlflow.tracking_uri", self.mlflow.tracking_uri.split(":///", 1)[-1])
                if scheme_of(self.mlflow.artifact_location) in ("", "file"):
                    local("mlflow.artifact_location", self.mlflow.artifact_location.removeprefix("file://"))
        return found


def registry_config(uri: str, storage_options: dict[str, str] | None = None) -> RegistryConfig:
    """The registry backend config a location implies (``Registry(uri)`` in scripts and tests)."""
    data: dict[str, Any] = {"uri": uri}
    if storage_options:
        data["storage_options"] = storage_options
    try:
        return TypeAdapter(RegistrySection).validate_python(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ConfigError(f"registry '{uri}': {exc.errors()[0]['msg']}") from exc


def _absolute(location: str) -> str:
    if "://" in location:
        return location
    return str(Path(location).expanduser().resolve())


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``MLSYS_ONLINE_STORE__TYPE=redis`` -> ``{"online_store": {"type": "redis"}}``."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> PlatformConfig:
    """Read the YAML file (if any), apply env overrides, validate, resolve paths."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("MLSYS_CONFIG")
    if path is None and Path("mlsys.yaml").exists():
        path = "mlsys.yaml"
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"config file {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
    data = _merge(data, _env_overrides(environ))
    if environ.get("MLSYS_HOME") and not data.get("home"):
        data["home"] = environ["MLSYS_HOME"]
    try:
        return PlatformConfig.model_validate(data).resolved()
    except ValidationError as exc:
        first = exc.errors()[0]
        # a backend section's loc carries the union member's tag (offline_store.s3.uri, online_store.redis.x):
        # users wrote the section's field, so drop it
        tags = {"file", "s3", "plugin", *_UNION_TAGS}
        loc = [p for i, p in enumerate(first["loc"]) if not (i == 1 and p in tags)]
        field = ".".join(str(p) for p in loc)
        raise ConfigError(f"config field '{field}': {first['msg']}") from exc
