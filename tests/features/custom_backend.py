"""An online store that lives outside the package, named in the config by its class path."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ml_system.config import OnlineStoreBaseConfig
from ml_system.features.online.sqlite import SqliteOnlineStore


class LabelledSqliteStoreConfig(OnlineStoreBaseConfig):
    path: str
    label: str = Field(min_length=1)


class LabelledSqliteStore(SqliteOnlineStore):
    """SQLite under another name, with a setting of its own (``label``)."""

    config_model = LabelledSqliteStoreConfig

    @classmethod
    def from_config(cls, config: Any) -> LabelledSqliteStore:
        store = cls(config.path, read_timeout_s=config.read_timeout_s, write_timeout_s=config.write_timeout_s)
        store.label = config.label
        return store


class NoConfigStore:
    """A class without a config model: refused when the config is loaded."""
