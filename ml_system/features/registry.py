"""Registry of feature definitions, kept as one JSON document next to the data.

Definitions are written in Python, but jobs, serving replicas and the CLI run in
other processes: they read the registry, not the user's module. Each ``apply``
is a read-modify-write under an exclusive file lock, written to a temporary file
and renamed, so two concurrent applies both land and a crash leaves the previous
version intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml_system.errors import DefinitionError
from ml_system.features.definitions import (
    DeltaSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Lifecycle,
)

Definition = Entity | FeatureView | FeatureService


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
        "lifecycle": view.lifecycle.value,
    }


def _view_from_dict(data: dict[str, Any], entities: dict[str, Entity]) -> FeatureView:
    return FeatureView(
        name=data["name"],
        entities=tuple(entities[n] for n in data["entities"]),
        schema=tuple(Field(**f) for f in data["schema"]),
        source=DeltaSource(**data["source"]),
        ttl=None if data["ttl_seconds"] is None else timedelta(seconds=data["ttl_seconds"]),
        owner=data["owner"],
        description=data["description"],
        tags=data["tags"],
        lifecycle=Lifecycle(data["lifecycle"]),
    )


class Registry:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 0, "entities": {}, "feature_views": {}, "feature_services": {}}
        return json.loads(self.path.read_text())

    def _write(self, doc: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".registry-")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def apply(self, objects: Iterable[Definition]) -> int:
        """Validate the whole batch against what is registered, then write it as one new version."""
        objects = list(objects)
        with self._locked():
            doc = self._read()
            entities = {
                n: Entity(name=n, join_keys=tuple(e["join_keys"]), description=e["description"])
                for n, e in doc["entities"].items()
            }
            for obj in objects:
                if isinstance(obj, Entity):
                    entities[obj.name] = obj
            for obj in objects:
                if isinstance(obj, Entity):
                    doc["entities"][obj.name] = {"join_keys": list(obj.join_keys), "description": obj.description}
                elif isinstance(obj, FeatureView):
                    for ent in obj.entities:
                        if ent.name not in entities:
                            raise DefinitionError(f"feature view '{obj.name}' uses unregistered entity '{ent.name}'")
                    doc["feature_views"][obj.name] = _view_to_dict(obj)
                elif isinstance(obj, FeatureService):
                    doc["feature_services"][obj.name] = {
                        "features": list(obj.features),
                        "description": obj.description,
                        "owner": obj.owner,
                    }
                else:
                    raise DefinitionError(f"cannot apply object of type {type(obj).__name__}")
            views = {n: _view_from_dict(v, entities) for n, v in doc["feature_views"].items()}
            for name, svc in doc["feature_services"].items():
                from ml_system.features.definitions import group_refs

                try:
                    group_refs(svc["features"], views)
                except Exception as exc:
                    raise DefinitionError(f"feature service '{name}': {exc}") from exc
            doc["version"] += 1
            doc["updated_at"] = datetime.now(UTC).isoformat()
            self._write(doc)
            return int(doc["version"])

    @property
    def version(self) -> int:
        return int(self._read()["version"])

    def entities(self) -> dict[str, Entity]:
        doc = self._read()
        return {
            n: Entity(name=n, join_keys=tuple(e["join_keys"]), description=e["description"])
            for n, e in doc["entities"].items()
        }

    def feature_views(self) -> dict[str, FeatureView]:
        doc = self._read()
        entities = {
            n: Entity(name=n, join_keys=tuple(e["join_keys"]), description=e["description"])
            for n, e in doc["entities"].items()
        }
        return {n: _view_from_dict(v, entities) for n, v in doc["feature_views"].items()}

    def feature_services(self) -> dict[str, FeatureService]:
        doc = self._read()
        return {
            n: FeatureService(name=n, features=tuple(s["features"]), description=s["description"], owner=s["owner"])
            for n, s in doc["feature_services"].items()
        }

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
