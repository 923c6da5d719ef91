"""Load a backend class named in a type table (``ml_system.config``) or by its class path.

The tables hold import paths, not classes, as Metaflow's plugin tables do: the
embedded default never imports an optional backend's dependencies (s3fs, a
Redis client), and a backend outside the package is one class path in the config.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from ml_system.errors import ConfigError

T = TypeVar("T")


def backend_class(kind: str, type_name: str, table: dict[str, str], base: type[T]) -> type[T]:
    """The class for ``type_name`` (a table key or ``pkg.module.Class``), checked to implement ``base``."""
    path = table.get(type_name, type_name)
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind} type '{type_name}': cannot load {path}: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, base)):
        known = ", ".join(sorted(table))
        raise ConfigError(f"{kind} type '{type_name}' is not a {base.__name__} (built-in types: {known})")
    return found
