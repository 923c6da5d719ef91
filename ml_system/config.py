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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

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


class OfflineStoreConfig(_Section):
    uri: str = ""
    """Root of the Delta tables: a local path or ``s3://bucket/prefix``."""
    storage_options: dict[str, str] = Field(default_factory=dict)


class RegistryConfig(_Section):
    uri: str = ""
    """Folder of the feature registry's versions: a local path or ``s3://bucket/prefix``
    (default ``<home>/registry``)."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    """Same ``AWS_*`` keys as the offline store's, so one set of credentials serves both."""


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
    """Import a backend named by path, for its ``config_model`` (nothing of the engine is imported by name)."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"unknown online store type '{path}': use {' or '.join(BUILTIN_ONLINE_STORES)}, "
            "or the import path of a class ('package.module.Class')"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"online store class '{path}' cannot be imported: {exc}") from exc
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
    experiment: str = "flight_delay"


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_rows_per_request: int = 1000


class PlatformConfig(_Section):
    home: str = ""
    ray: RayConfig = Field(default_factory=RayConfig)
    offline_store: OfflineStoreConfig = Field(default_factory=OfflineStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    online_store: OnlineStoreConfig = Field(default_factory=SqliteOnlineStoreConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    def resolved(self) -> PlatformConfig:
        """Fill every empty location from ``home`` and make local paths absolute."""
        home = Path(self.home or os.environ.get("MLSYS_HOME") or Path.home() / ".mlsys")
        home = home.expanduser().resolve()
        data = self.model_dump()
        data["home"] = str(home)
        off = data["offline_store"]
        off["uri"] = _absolute(off["uri"] or str(home / "offline"))
        reg = data["registry"]
        reg["uri"] = _absolute(reg["uri"] or str(home / "registry"))
        on = data["online_store"]
        if on["type"] == "sqlite":
            on["path"] = _absolute(on["path"] or str(home / "online.db"))
        ml = data["mlflow"]
        ml["tracking_uri"] = ml["tracking_uri"] or f"sqlite:///{home / 'mlflow.db'}"
        ml["artifact_location"] = _absolute(ml["artifact_location"] or str(home / "mlartifacts"))
        return PlatformConfig.model_validate(data)


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
        loc = list(first["loc"])
        if loc[:1] == ["online_store"] and len(loc) > 1 and loc[1] in _UNION_TAGS:
            del loc[1]  # the union member pydantic tried: users wrote online_store.<field>
        field = ".".join(str(p) for p in loc)
        raise ConfigError(f"config field '{field}': {first['msg']}") from exc
