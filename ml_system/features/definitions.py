"""The nouns Feast users know: Entity, Field, FeatureView, FeatureService.

Plain dataclasses with validation in ``__post_init__`` so a bad definition
fails where it is written, not at the first join. Each carries what the
registry needs (owner, description, tags, lifecycle) so that later registry
versions can diff them field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from ml_system.errors import DefinitionError, FeatureReferenceError

_DTYPES = {"float64", "float32", "int64", "int32", "string", "bool"}


class Lifecycle(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


@dataclass(frozen=True)
class Entity:
    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.join_keys, str) or not self.join_keys:
            raise DefinitionError(f"entity '{self.name}': join_keys must be a non-empty list of column names")
        object.__setattr__(self, "join_keys", tuple(self.join_keys))


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "schema", tuple(self.schema))
        if not self.entities:
            raise DefinitionError(f"feature view '{self.name}': needs at least one entity")
        if not self.schema:
            raise DefinitionError(f"feature view '{self.name}': schema is empty")
        names = [f.name for f in self.schema]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise DefinitionError(f"feature view '{self.name}': duplicate fields {sorted(dupes)}")
        clash = set(names) & set(self.join_keys)
        if clash:
            raise DefinitionError(f"feature view '{self.name}': fields {sorted(clash)} shadow join keys")
        if self.lifecycle is not None:
            object.__setattr__(self, "lifecycle", Lifecycle(self.lifecycle))
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise DefinitionError(f"feature view '{self.name}': ttl must be positive or None")

    @property
    def join_keys(self) -> tuple[str, ...]:
        keys: list[str] = []
        for entity in self.entities:
            keys.extend(k for k in entity.join_keys if k not in keys)
        return tuple(keys)

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
        object.__setattr__(self, "features", tuple(self.features))
        for ref in self.features:
            parse_ref(ref)


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``"view:feature"``; anything else is a clear error, not a KeyError later."""
    view, sep, feature = ref.partition(":")
    if not sep or not view or not feature:
        raise FeatureReferenceError(f"feature reference '{ref}' must look like 'view:feature'")
    return view, feature


def group_refs(refs: list[str] | tuple[str, ...], views: dict[str, FeatureView]) -> dict[str, list[str]]:
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
