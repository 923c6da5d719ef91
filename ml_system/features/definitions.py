"""The nouns Feast users know: Entity, Field, FeatureView, FeatureService.

Plain dataclasses with validation in ``__post_init__`` so a bad definition
fails where it is written, not at the first join. Each carries what the
registry needs (owner, description, tags, lifecycle) so that later registry
versions can diff them field by field.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from ml_system.errors import DefinitionError, FeatureReferenceError

_DTYPES = {"float64", "float32", "int64", "int32", "string", "bool", "timestamp"}
KEY_TYPES = ("string", "int64", "int32")
"""Join-key value types (Feast's ``ValueType`` for entities): keys are normalised to them before they are stored."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def check_name(kind: str, name: object) -> str:
    """The one rule for every name that becomes a table, a key prefix or a path: views, entities,
    feature services and offline tables, checked where they are defined and where the registry is read.

    Lowercase letters, digits and single underscores, starting with a letter, at most 63
    characters. Lowercase only because SQLite table names (and many filesystems) ignore case, so
    'Weather' and 'weather' would be one table; no '__' because the SQLite store names a snapshot's
    table ``fv_<view>__<snapshot>``; no '/', '.' or ':' so that a table name never leaves the
    offline root and a view name never spans Redis key parts.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or "__" in name:
        raise DefinitionError(
            f"{kind} name {name!r} is not allowed: use 1-63 lowercase letters, digits and single underscores, "
            "starting with a letter"
        )
    return name


class Lifecycle(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


@dataclass(frozen=True)
class Entity:
    """``value_type``: the type of the join keys' values, one for all of them or a mapping per key
    (kept as a tuple aligned with ``join_keys``). Keys are stored in that type's canonical text, so
    an ``int64`` key that became a float offline (``1.0``) is stored as ``1`` and a request for
    ``1`` finds it; ``string`` (the default) stores ``str(value)``."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""
    value_type: str | Mapping[str, str] | tuple[str, ...] = "string"

    def __post_init__(self) -> None:
        check_name("entity", self.name)
        if isinstance(self.join_keys, str) or not self.join_keys:
            raise DefinitionError(f"entity '{self.name}': join_keys must be a non-empty list of column names")
        object.__setattr__(self, "join_keys", tuple(self.join_keys))
        if isinstance(self.value_type, str):
            types = (self.value_type,) * len(self.join_keys)
        elif isinstance(self.value_type, Mapping):
            unknown = sorted(set(self.value_type) - set(self.join_keys))
            if unknown:
                raise DefinitionError(f"entity '{self.name}': value_type names keys {unknown} that are not join keys")
            types = tuple(self.value_type.get(k, "string") for k in self.join_keys)
        else:
            types = tuple(self.value_type)
            if len(types) != len(self.join_keys):
                raise DefinitionError(f"entity '{self.name}': value_type needs one type per join key")
        bad = [t for t in types if t not in KEY_TYPES]
        if bad:
            raise DefinitionError(f"entity '{self.name}': key value_type {bad[0]!r} is not one of {list(KEY_TYPES)}")
        object.__setattr__(self, "value_type", types)

    @property
    def key_types(self) -> dict[str, str]:
        return dict(zip(self.join_keys, self.value_type, strict=True))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise DefinitionError(f"field '{self.name}': dtype '{self.dtype}' is not one of {sorted(_DTYPES)}")


@dataclass(frozen=True)
class DeltaSource:
    """A Delta table in the offline store, named relative to the store's root."""

    table: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = "created_timestamp"

    def __post_init__(self) -> None:
        check_name("offline table", self.table)


def _check_schema(what: str, schema: tuple[Field, ...], taken: Any, clash_reason: str) -> None:
    """A non-empty schema of distinct names, none of them among ``taken`` (join keys, inputs)."""
    if not schema:
        raise DefinitionError(f"{what}: schema is empty")
    names = [f.name for f in schema]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DefinitionError(f"{what}: duplicate fields {sorted(dupes)}")
    clash = set(names) & set(taken)
    if clash:
        raise DefinitionError(f"{what}: fields {sorted(clash)} {clash_reason}")


@dataclass(frozen=True)
class FeatureView:
    name: str
    entities: tuple[Entity, ...]
    schema: tuple[Field, ...]
    source: DeltaSource
    ttl: timedelta | None = None
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    lifecycle: Lifecycle | None = None
    """None keeps the registered state (a new view starts active); the registry owns it after that."""
    team: str = ""
    """The team of the resource groups that owns the view: where team tokens are enforced, only its token
    may change the view, move it through its lifecycle or push rows to it (``docs/security.md``)."""

    def __post_init__(self) -> None:
        check_name("feature view", self.name)
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "schema", tuple(self.schema))
        if not self.entities:
            raise DefinitionError(f"feature view '{self.name}': needs at least one entity")
        _check_schema(f"feature view '{self.name}'", self.schema, self.join_keys, "shadow join keys")
        if self.lifecycle is not None:
            object.__setattr__(self, "lifecycle", Lifecycle(self.lifecycle))
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise DefinitionError(f"feature view '{self.name}': ttl must be positive or None")
        declared: dict[str, str] = {}
        for entity in self.entities:
            for key, kind in entity.key_types.items():
                if declared.setdefault(key, kind) != kind:
                    raise DefinitionError(
                        f"feature view '{self.name}': join key '{key}' is {declared[key]} in one entity "
                        f"and {kind} in entity '{entity.name}'"
                    )

    @property
    def join_keys(self) -> tuple[str, ...]:
        keys: list[str] = []
        for entity in self.entities:
            keys.extend(k for k in entity.join_keys if k not in keys)
        return tuple(keys)

    @property
    def key_types(self) -> tuple[str, ...]:
        """The value type of each join key, in ``join_keys`` order."""
        types: dict[str, str] = {}
        for entity in self.entities:
            for key, kind in entity.key_types.items():
                types.setdefault(key, kind)
        return tuple(types[k] for k in self.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)


@dataclass(frozen=True)
class FeatureService:
    """A named, versionable list of feature references a model is trained on."""

    name: str
    features: tuple[str, ...]
    description: str = ""
    owner: str = ""

    def __post_init__(self) -> None:
        check_name("feature service", self.name)
        object.__setattr__(self, "features", tuple(self.features))
        for ref in self.features:
            parse_ref(ref)


def function_path(fn: Callable[..., Any] | str, what: str) -> str:
    """``module:qualname`` of a top-level function, so every process can import the same code.

    The registry keeps the path, not a pickle (Feast stores a dill payload): a Serve replica or a
    job on another node imports the transform from the package it already has, and a lambda or a
    closure, which no other process could import, is refused where it is written.
    """
    if isinstance(fn, str):
        module, sep, name = fn.partition(":")
        if not sep or not module or not name:
            raise DefinitionError(f"{what}: '{fn}' is not an import path of the form 'package.module:function'")
        return fn
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise DefinitionError(f"{what}: {fn!r} must be a top-level function of an importable module")
    return f"{module}:{qualname}"


def import_function(path: str, what: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise DefinitionError(f"{what}: cannot import '{path}': {exc}") from exc
    if not callable(obj):
        raise DefinitionError(f"{what}: '{path}' is not callable")
    return obj


@dataclass(frozen=True, init=False)
class OnDemandFeatureView:
    """Features computed from the request itself (Feast's ``OnDemandFeatureView``), declared once.

    ``transform`` maps a pandas frame holding the ``inputs`` columns to a frame of the ``schema``
    columns: training applies it to the whole training set after the point-in-time join.
    ``transform_row`` takes one row's inputs as arguments and returns the outputs as a tuple in
    schema order: serving calls it per request, where building a one-row DataFrame costs more
    than the model. Both are stored as import paths; the use case's tests hold them equal.
    """

    name: str
    inputs: tuple[Field, ...]
    schema: tuple[Field, ...]
    transform: str
    transform_row: str
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def __init__(
        self,
        name: str,
        inputs: Any,
        schema: Any,
        transform: Callable[..., Any] | str,
        transform_row: Callable[..., Any] | str,
        owner: str = "",
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        what = f"on-demand feature view '{name}'"
        check_name("on-demand feature view", name)
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "inputs", tuple(inputs))
        set_(self, "schema", tuple(schema))
        set_(self, "transform", function_path(transform, what))
        set_(self, "transform_row", function_path(transform_row, what))
        set_(self, "owner", owner)
        set_(self, "description", description)
        set_(self, "tags", dict(tags or {}))
        if not self.inputs:
            raise DefinitionError(f"{what}: needs at least one input field")
        _check_schema(what, self.schema, [f.name for f in self.inputs], "are also inputs")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    def batch_function(self) -> Callable[..., Any]:
        return import_function(self.transform, f"on-demand feature view '{self.name}'")

    def row_function(self) -> Callable[..., tuple[Any, ...]]:
        return import_function(self.transform_row, f"on-demand feature view '{self.name}'")

    def code_digest(self) -> str:
        """A digest of both functions' source, so ``plan`` shows when the transform's code changed."""
        digest = hashlib.sha256()
        for path in (self.transform, self.transform_row):
            try:
                digest.update(inspect.getsource(import_function(path, self.name)).encode())
            except (OSError, TypeError):
                digest.update(path.encode())
        return digest.hexdigest()[:16]


AnyFeatureView = FeatureView | OnDemandFeatureView


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``"view:feature"``; anything else is a clear error, not a KeyError later."""
    view, sep, feature = ref.partition(":")
    if not sep or not view or not feature:
        raise FeatureReferenceError(f"feature reference '{ref}' must look like 'view:feature'")
    return view, feature


def group_refs(refs: list[str] | tuple[str, ...], views: dict[str, Any]) -> dict[str, list[str]]:
    """Group references by view, checking each exists and output names do not collide."""
    grouped: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for ref in refs:
        view_name, feature = parse_ref(ref)
        view = views.get(view_name)
        if view is None:
            raise FeatureReferenceError(f"feature reference '{ref}': no feature view named '{view_name}'")
        if feature not in view.feature_names:
            raise FeatureReferenceError(
                f"feature reference '{ref}': view '{view_name}' has no feature '{feature}' "
                f"(it has {list(view.feature_names)})"
            )
        if feature in seen and seen[feature] != view_name:
            raise FeatureReferenceError(
                f"feature name '{feature}' is requested from both '{seen[feature]}' and '{view_name}'"
            )
        seen[feature] = view_name
        grouped.setdefault(view_name, [])
        if feature not in grouped[view_name]:
            grouped[view_name].append(feature)
    return grouped
