"""Platform configuration: one typed object, read in one place.

Values come from (lowest to highest precedence) the defaults below, a YAML file
(``--config`` / ``MLSYS_CONFIG`` / ``./mlsys.yaml``) and ``MLSYS_<SECTION>__<FIELD>``
environment variables, as Metaflow reads ``METAFLOW_*``. Paths default under
``MLSYS_HOME`` (``~/.mlsys``) and are made absolute, because ``ray job submit``
runs entrypoints in a temporary copy of the working directory where a relative
path would silently point at a throw-away folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class OnlineStoreConfig(_Section):
    type: Literal["sqlite", "redis"] = "sqlite"
    path: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_read_spin_us: int = Field(100, ge=0, le=10_000)
    """How long a lookup polls its socket for Redis' reply before sleeping (0: never). Waking a
    sleeping thread cost more than the round trip itself here; a remote Redis that never answers
    within the spin makes the reader stop spinning for a while (``online/resp.py``)."""


class FeaturesConfig(_Section):
    max_future_skew_s: float = Field(300.0, ge=0)
    """How far past this machine's clock an event time may lie (a pushed row, a materialization
    ``end``). Rows from the future would win every later upsert for their key, so they are refused."""


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


class PlatformConfig(_Section):
    home: str = ""
    usecases: dict[str, str] = Field(default_factory=dict)
    """Extra or replacement use cases, ``name: package.module:attribute``, over the built-in table."""
    ray: RayConfig = Field(default_factory=RayConfig)
    offline_store: OfflineStoreConfig = Field(default_factory=OfflineStoreConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    online_store: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    teams: TeamsConfig = Field(default_factory=TeamsConfig)

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
        on["path"] = _absolute(on["path"] or str(home / "online.db"))
        ml = data["mlflow"]
        ml["tracking_uri"] = ml["tracking_uri"] or f"sqlite:///{home / 'mlflow.db'}"
        ml["artifact_location"] = _absolute(ml["artifact_location"] or str(home / "mlartifacts"))
        teams = data["teams"]
        teams["resource_groups"] = _absolute(teams["resource_groups"])
        teams["state_dir"] = _absolute(teams["state_dir"] or str(home / "teams"))
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
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"config field '{field}': {first['msg']}") from exc
