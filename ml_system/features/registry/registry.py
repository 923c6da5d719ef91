"""Registry of feature definitions: numbered, immutable JSON versions next to the data.

Definitions are written in Python, but jobs, serving replicas and the CLI run in
other processes: they read the registry, not the user's module. Each change
(apply, a lifecycle move, a consumer recorded) builds the next whole document
from the latest one and creates it as a new version; two writers that raced
for the same number retry from the winner's version (see ``storage``), so
concurrent applies both land and a failed change writes nothing.

Why not MLflow's registry: it versions models, not feature views; the link
between the two is recorded here as *consumers* (model versions trained on a
feature service), so retiring a view that a live model reads can be refused.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ml_system.config import RegistryConfig, registry_config
from ml_system.errors import DefinitionError, MLSystemError, StoreError
from ml_system.features.definitions import (
    DeltaSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Lifecycle,
    OnDemandFeatureView,
    group_refs,
)
from ml_system.features.registry.diff import Change, diff_documents
from ml_system.features.registry.storage import VersionStore, open_version_store
from ml_system.features.streaming.views import StreamFeatureView

Definition = Entity | FeatureView | OnDemandFeatureView | FeatureService
Guard = Callable[[dict[str, Any], dict[str, Any]], None]
"""Called with the latest document and the changed one before a version is written; raises to refuse
the change (``features.ownership`` checks that the acting team owns every view it changes)."""

# draft -> active -> deprecated -> retired; a deprecation can be withdrawn, retired is final
TRANSITIONS: dict[Lifecycle, set[Lifecycle]] = {
    Lifecycle.DRAFT: {Lifecycle.ACTIVE, Lifecycle.RETIRED},
    Lifecycle.ACTIVE: {Lifecycle.DEPRECATED},
    Lifecycle.DEPRECATED: {Lifecycle.ACTIVE, Lifecycle.RETIRED},
    Lifecycle.RETIRED: set(),
}
_META = ("version", "created_at", "created_by", "summary")
_SECTIONS = ("entities", "feature_views", "feature_services", "consumers")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LifecycleEvent:
    state: Lifecycle
    by: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class Consumer:
    """A model version trained on a feature service, and the views it reads."""

    model: str
    version: str
    feature_service: str
    views: tuple[str, ...]
    recorded_at: datetime
    archived: bool


def _empty() -> dict[str, Any]:
    return {
        "version": 0,
        "entities": {},
        "feature_views": {},
        "on_demand_feature_views": {},
        "feature_services": {},
        "consumers": {},
    }


def _view_to_dict(view: FeatureView) -> dict[str, Any]:
    return {
        "name": view.name,
        "entities": [e.name for e in view.entities],
        "schema": [asdict(f) for f in view.schema],
        "source": asdict(view.source),
        "ttl_seconds": None if view.ttl is None else view.ttl.total_seconds(),
        "owner": view.owner,
        "description": view.description,
        "tags": dict(view.tags),
        **({"team": view.team} if view.team else {}),  # recorded only when declared, so older documents match
        **({"stream": view.stream_dict()} if isinstance(view, StreamFeatureView) else {}),
    }


def _view_from_dict(data: dict[str, Any], entities: dict[str, Entity]) -> FeatureView:
    view = FeatureView(
        name=data["name"],
        entities=tuple(entities[n] for n in data["entities"]),
        schema=tuple(Field(**f) for f in data["schema"]),
        source=DeltaSource(**data["source"]),
        ttl=None if data["ttl_seconds"] is None else timedelta(seconds=data["ttl_seconds"]),
        owner=data["owner"],
        description=data["description"],
        tags=data["tags"],
        lifecycle=Lifecycle(data["lifecycle"]),
        team=data.get("team", ""),
    )
    return StreamFeatureView.from_registry(view, data["stream"]) if "stream" in data else view


def _odfv_to_dict(view: OnDemandFeatureView) -> dict[str, Any]:
    return {
        "name": view.name,
        "inputs": [asdict(f) for f in view.inputs],
        "schema": [asdict(f) for f in view.schema],
        "transform": view.transform,
        "transform_row": view.transform_row,
        "code_digest": view.code_digest(),
        "owner": view.owner,
        "description": view.description,
        "tags": dict(view.tags),
    }


def _odfvs(doc: dict[str, Any]) -> dict[str, OnDemandFeatureView]:
    return {
        n: OnDemandFeatureView(
            name=n,
            inputs=[Field(**f) for f in v["inputs"]],
            schema=[Field(**f) for f in v["schema"]],
            transform=v["transform"],
            transform_row=v["transform_row"],
            owner=v["owner"],
            description=v["description"],
            tags=v["tags"],
        )
        for n, v in doc.get("on_demand_feature_views", {}).items()
    }


def _entities(doc: dict[str, Any]) -> dict[str, Entity]:
    return {
        n: Entity(
            name=n,
            join_keys=tuple(e["join_keys"]),
            description=e["description"],
            value_type=e.get("value_types", "string"),
        )
        for n, e in doc["entities"].items()
    }


def _services(doc: dict[str, Any]) -> dict[str, FeatureService]:
    return {
        n: FeatureService(name=n, features=tuple(s["features"]), description=s["description"], owner=s["owner"])
        for n, s in doc["feature_services"].items()
    }


def _event(state: Lifecycle, by: str, reason: str) -> dict[str, str]:
    return {"state": state.value, "by": by, "at": datetime.now(UTC).isoformat(), "reason": reason}


def _move(entry: dict[str, Any], name: str, state: Lifecycle, by: str, reason: str) -> None:
    current = Lifecycle(entry["lifecycle"])
    if state == current:
        return
    if state not in TRANSITIONS[current]:
        allowed = sorted(s.value for s in TRANSITIONS[current]) or ["none: retired is final"]
        raise DefinitionError(
            f"feature view '{name}' cannot move from {current.value} to {state.value} (allowed: {allowed})"
        )
    entry["lifecycle"] = state.value
    entry.setdefault("history", []).append(_event(state, by, reason))


def _refuse_if_used(doc: dict[str, Any], view: str, action: str) -> None:
    users = [c for c in doc["consumers"].values() if not c["archived"] and view in c["views"]]
    if users:
        names = ", ".join(f"{c['model']} v{c['version']} (service {c['feature_service']})" for c in users)
        raise DefinitionError(
            f"cannot {action} feature view '{view}': models still use it: {names}; archive those model versions "
            "first (MLflow stage 'Archived', then `mlsys features sync-consumers`)"
        )


def _validate(doc: dict[str, Any]) -> None:
    """Whole-document consistency, checked before any version is written."""
    entities = _entities(doc)
    for name, view in doc["feature_views"].items():
        for ent in view["entities"]:
            if ent not in entities:
                raise DefinitionError(f"feature view '{name}' uses unregistered entity '{ent}'")
    views: dict[str, FeatureView | OnDemandFeatureView] = {
        n: _view_from_dict(v, entities) for n, v in doc["feature_views"].items()
    }
    ondemand = _odfvs(doc)
    clash = sorted(set(views) & set(ondemand))
    if clash:
        raise DefinitionError(f"names {clash} are used by both a feature view and an on-demand feature view")
    views.update(ondemand)
    for name, svc in doc["feature_services"].items():
        try:
            grouped = group_refs(svc["features"], views)
        except MLSystemError as exc:
            raise DefinitionError(f"feature service '{name}': {exc}") from exc
        retired = [v for v in grouped if getattr(views[v], "lifecycle", None) == Lifecycle.RETIRED]
        if retired:
            raise DefinitionError(
                f"feature service '{name}' reads retired feature views {retired}; change the service first"
            )


class Registry:
    """Read and change the registry; every change is one new version or none."""

    max_attempts = 50

    def __init__(
        self,
        config: RegistryConfig | str,
        storage_options: dict[str, str] | None = None,
        shared_paths: tuple[str, ...] | list[str] = (),
    ) -> None:
        """``config`` is the registry's backend config, or a location (``Registry("s3://b/registry", opts)``)."""
        if isinstance(config, str):
            config = registry_config(config, storage_options)
        self.uri = config.uri
        self.config = config
        self.store: VersionStore = open_version_store(config, shared_paths)
        self._cache: tuple[int, dict[str, Any]] = (0, _empty())
        self._reported: set[int] = set()
        self._pinned: tuple[int, dict[str, Any]] | None = None

    def at_version(self, version: int) -> Registry:
        """This registry as it was at ``version``, read-only: how a reproduction sees the definitions a
        training run saw, whatever was applied since."""
        pinned = copy.copy(self)
        pinned._pinned = (version, self._parse(version))
        return pinned

    # ---- reading ------------------------------------------------------------------
    def _load(self) -> tuple[int, dict[str, Any]]:
        """The highest version number present and the newest document that reads whole.

        They differ only when the newest version is damaged (a truncated copy, a disk that filled up):
        that file is reported by name once, reads are served from the version before it, and the next
        change is written after it (its number is taken, so it can never be created again).
        """
        if self._pinned is not None:
            return self._pinned
        latest = self.store.latest()
        if latest != self._cache[0]:
            self._cache = (latest, self._newest_readable(latest))
        return self._cache

    def _newest_readable(self, latest: int) -> dict[str, Any]:
        for version in range(latest, 0, -1):
            try:
                return self._parse(version)
            except StoreError as exc:
                if version not in self._reported:
                    self._reported.add(version)
                    log.warning("%s; serving the newest version before it", exc)
        return _empty()

    def _parse(self, version: int) -> dict[str, Any]:
        where = self.store.location(version)
        try:
            doc = json.loads(self.store.read(version))
        except (ValueError, OSError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise StoreError(f"registry version file {where} is unreadable or corrupt: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != version or any(k not in doc for k in _SECTIONS):
            raise StoreError(f"registry version file {where} is corrupt: not a registry document of version {version}")
        return doc

    @property
    def corrupt_versions(self) -> list[str]:
        """Files found damaged so far (each also logged once), to show beside a listing."""
        return [self.store.location(v) for v in sorted(self._reported)]

    @property
    def version(self) -> int:
        return self._load()[0]

    def document(self, version: int | None = None) -> dict[str, Any]:
        """The raw document of a version (the latest by default), e.g. to audit who changed what."""
        if version is None:
            return copy.deepcopy(self._load()[1])
        return self._parse(version)

    def entities(self) -> dict[str, Entity]:
        return _entities(self._load()[1])

    def feature_views(self) -> dict[str, FeatureView]:
        doc = self._load()[1]
        entities = _entities(doc)
        return {n: _view_from_dict(v, entities) for n, v in doc["feature_views"].items()}

    def feature_services(self) -> dict[str, FeatureService]:
        return _services(self._load()[1])

    def on_demand_feature_views(self) -> dict[str, OnDemandFeatureView]:
        return _odfvs(self._load()[1])

    def feature_view(self, name: str) -> FeatureView:
        views = self.feature_views()
        if name not in views:
            raise DefinitionError(f"no feature view named '{name}' is registered (have {sorted(views)})")
        return views[name]

    def feature_service(self, name: str) -> FeatureService:
        services = self.feature_services()
        if name not in services:
            raise DefinitionError(f"no feature service named '{name}' is registered (have {sorted(services)})")
        return services[name]

    def history(self, view: str) -> list[LifecycleEvent]:
        views = self._load()[1]["feature_views"]
        if view not in views:
            raise DefinitionError(f"no feature view named '{view}' is registered (have {sorted(views)})")
        entry = views[view]
        return [
            LifecycleEvent(Lifecycle(e["state"]), e["by"], datetime.fromisoformat(e["at"]), e["reason"])
            for e in entry.get("history", [])
        ]

    def consumers(self, view: str | None = None, include_archived: bool = False) -> list[Consumer]:
        out = []
        for c in self._load()[1]["consumers"].values():
            if (view is None or view in c["views"]) and (include_archived or not c["archived"]):
                out.append(
                    Consumer(
                        c["model"],
                        c["version"],
                        c["feature_service"],
                        tuple(c["views"]),
                        datetime.fromisoformat(c["recorded_at"]),
                        c["archived"],
                    )
                )
        return sorted(out, key=lambda c: (c.model, int(c.version) if c.version.isdigit() else c.version))

    # ---- changing -----------------------------------------------------------------
    def _commit(self, mutate: Callable[[dict[str, Any]], str], by: str, guard: Guard | None = None) -> int:
        """Apply ``mutate`` to the latest document and create the next version, retrying on a lost race."""
        if self._pinned is not None:
            raise StoreError(f"registry at {self.uri} is pinned at version {self._pinned[0]}: it is read-only")
        for attempt in range(self.max_attempts):
            version, base = self._load()
            doc = copy.deepcopy(base)
            what = mutate(doc)
            _validate(doc)
            if {k: v for k, v in doc.items() if k not in _META} == {k: v for k, v in base.items() if k not in _META}:
                return version
            if guard is not None:
                guard(base, doc)
            doc.update(
                version=version + 1,
                created_at=datetime.now(UTC).isoformat(),
                created_by=by,
                summary=[what, *(str(c) for c in diff_documents(base, doc))],
            )
            if self.store.create(version + 1, json.dumps(doc, indent=1, sort_keys=True).encode()):
                self._cache = (version + 1, doc)
                return version + 1
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise StoreError(f"registry at {self.uri}: gave up after {self.max_attempts} conflicting writers")

    def _desired(self, objects: list[Definition], doc: dict[str, Any], by: str, prune: bool) -> None:
        given: dict[str, set[str]] = {
            "entities": set(),
            "feature_views": set(),
            "on_demand_feature_views": set(),
            "feature_services": set(),
        }
        doc.setdefault("on_demand_feature_views", {})
        for obj in objects:
            if isinstance(obj, Entity):
                doc["entities"][obj.name] = {"join_keys": list(obj.join_keys), "description": obj.description}
                if set(obj.key_types.values()) != {"string"}:  # recorded only when declared, so older documents match
                    doc["entities"][obj.name]["value_types"] = obj.key_types
                given["entities"].add(obj.name)
            elif isinstance(obj, FeatureView):  # its entities are checked with the whole document (_validate)
                entry = _view_to_dict(obj)
                old = doc["feature_views"].get(obj.name)
                if old is None:
                    state = obj.lifecycle or Lifecycle.ACTIVE
                    entry.update(lifecycle=state.value, history=[_event(state, by, "created")])
                else:
                    entry.update(lifecycle=old["lifecycle"], history=list(old.get("history", [])))
                    if obj.lifecycle is not None:
                        if obj.lifecycle == Lifecycle.RETIRED:
                            _refuse_if_used(doc, obj.name, "retire")
                        _move(entry, obj.name, obj.lifecycle, by, "apply")
                doc["feature_views"][obj.name] = entry
                given["feature_views"].add(obj.name)
            elif isinstance(obj, OnDemandFeatureView):
                doc["on_demand_feature_views"][obj.name] = _odfv_to_dict(obj)
                given["on_demand_feature_views"].add(obj.name)
            elif isinstance(obj, FeatureService):
                doc["feature_services"][obj.name] = {
                    "features": list(obj.features),
                    "description": obj.description,
                    "owner": obj.owner,
                }
                given["feature_services"].add(obj.name)
            else:
                raise DefinitionError(f"cannot apply object of type {type(obj).__name__}")
        if prune:
            for name in set(doc["feature_views"]) - given["feature_views"]:
                _refuse_if_used(doc, name, "delete")
                del doc["feature_views"][name]
            for name in set(doc["on_demand_feature_views"]) - given["on_demand_feature_views"]:
                _refuse_if_used(doc, name, "delete")
                del doc["on_demand_feature_views"][name]
            for name in set(doc["feature_services"]) - given["feature_services"]:
                users = [c for c in doc["consumers"].values() if not c["archived"] and c["feature_service"] == name]
                if users:
                    models = ", ".join(f"{c['model']} v{c['version']}" for c in users)
                    raise DefinitionError(f"cannot delete feature service '{name}': models still use it: {models}")
                del doc["feature_services"][name]
            for name in set(doc["entities"]) - given["entities"]:
                del doc["entities"][name]

    def plan(self, objects: Iterable[Definition], *, prune: bool = True) -> list[Change]:
        """What ``apply`` would change, without writing (and with the same validation)."""
        objects = list(objects)
        _, base = self._load()
        doc = copy.deepcopy(base)
        self._desired(objects, doc, by="plan", prune=prune)
        _validate(doc)
        return diff_documents(base, doc)

    def apply(
        self, objects: Iterable[Definition], *, by: str = "", prune: bool = False, guard: Guard | None = None
    ) -> int:
        """Validate the whole batch against what is registered, then write it as one new version.

        With ``prune`` the objects are the desired state: registered objects not among
        them are deleted (refused for views and services that live models use).
        """
        objects = list(objects)

        def mutate(doc: dict[str, Any]) -> str:
            self._desired(objects, doc, by, prune)
            return f"apply {len(objects)} definitions" + (" (prune)" if prune else "")

        return self._commit(mutate, by, guard)

    def set_lifecycle(
        self, view: str, state: Lifecycle | str, *, by: str, reason: str = "", guard: Guard | None = None
    ) -> int:
        state = Lifecycle(state)
        if not by:
            raise DefinitionError("a lifecycle change needs the name of who makes it (--by)")

        def mutate(doc: dict[str, Any]) -> str:
            entry = doc["feature_views"].get(view)
            if entry is None:
                have = sorted(doc["feature_views"])
                raise DefinitionError(f"no feature view named '{view}' is registered (have {have})")
            if state == Lifecycle.RETIRED:
                _refuse_if_used(doc, view, "retire")
            before = entry["lifecycle"]
            _move(entry, view, state, by, reason)
            return f"lifecycle {view}: {before} -> {state.value}"

        return self._commit(mutate, by, guard)

    def delete_feature_view(self, view: str, *, by: str, guard: Guard | None = None) -> int:
        def mutate(doc: dict[str, Any]) -> str:
            if view not in doc["feature_views"]:
                raise DefinitionError(f"no feature view named '{view}' is registered")
            _refuse_if_used(doc, view, "delete")
            del doc["feature_views"][view]
            return f"delete feature view {view}"

        return self._commit(mutate, by, guard)

    def record_consumer(self, feature_service: str, model: str, version: str | int, *, by: str = "") -> int:
        """Note that a model version was trained on ``feature_service`` (and so reads its views)."""

        def mutate(doc: dict[str, Any]) -> str:
            svc = doc["feature_services"].get(feature_service)
            if svc is None:
                raise DefinitionError(f"no feature service named '{feature_service}' is registered")
            views = sorted({ref.partition(":")[0] for ref in svc["features"]})
            key = f"{model}:{version}"
            old = doc["consumers"].get(key)
            doc["consumers"][key] = {
                "model": model,
                "version": str(version),
                "feature_service": feature_service,
                "views": views,
                "recorded_at": old["recorded_at"] if old else datetime.now(UTC).isoformat(),
                "archived": False,
            }
            return f"consumer {model} v{version} of {feature_service}"

        return self._commit(mutate, by)

    def archive_consumer(self, model: str, version: str | int, *, by: str = "") -> int:
        """The model version no longer serves; its views may be retired."""

        def mutate(doc: dict[str, Any]) -> str:
            entry = doc["consumers"].get(f"{model}:{version}")
            if entry is None:
                raise DefinitionError(f"model '{model}' version {version} is not a recorded consumer")
            entry["archived"] = True
            return f"archive consumer {model} v{version}"

        return self._commit(mutate, by)
