"""What a step's cache key and a run's record are made of: code version, definitions, digests.

The code version is a digest of the source files the process imported the platform (and an
external use case) from, plus the versions of the libraries that decide what a model learns. A
git commit is recorded beside it when there is one, but it is not the key: ``ray job submit``
uploads a working directory without ``.git``, and an uncommitted edit changes behaviour without
changing the commit. Hashing about a hundred small files takes milliseconds, once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_system

LIBRARIES = ("xgboost", "numpy", "pandas", "pyarrow", "deltalake", "polars", "ray", "mlflow", "scikit-learn")
# what a registry entry holds that does not change which rows or values a feature service yields
VOLATILE = frozenset({"lifecycle", "history", "owner", "description", "tags"})


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


@functools.cache
def source_digest(package_dir: str) -> str:
    root = Path(package_dir)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def git_commit(directory: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _package_dir(module: str) -> str | None:
    top = sys.modules.get(module.split(".", 1)[0])
    where = getattr(top, "__file__", None)
    return str(Path(where).parent) if where else None


def code_version(extra_modules: tuple[str, ...] = ()) -> dict[str, Any]:
    """``source``: one digest over the platform's sources (and those of ``extra_modules``' packages)."""
    platform_dir = str(Path(ml_system.__file__).parent)
    sources = {"ml_system": source_digest(platform_dir)}
    for module in extra_modules:
        found = _package_dir(module)
        if found and found != platform_dir:
            sources[module.split(".", 1)[0]] = source_digest(found)
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = ""
    return {
        "source": digest({"sources": sources, "libraries": libraries}),
        "git": git_commit(platform_dir),
        "libraries": libraries,
    }


def definitions_of(document: dict[str, Any], service: str) -> dict[str, Any]:
    """The part of a registry document a feature service depends on, without lifecycle or ownership."""
    from ml_system.features.definitions import parse_ref

    svc = document.get("feature_services", {}).get(service)
    if svc is None:
        return {"feature_service": service, "missing": True}
    views = sorted({parse_ref(ref)[0] for ref in svc["features"]})
    stored = {v: document["feature_views"][v] for v in views if v in document.get("feature_views", {})}
    computed = {
        v: document["on_demand_feature_views"][v] for v in views if v in document.get("on_demand_feature_views", {})
    }
    entities = sorted({e for view in stored.values() for e in view.get("entities", [])})

    def keep(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in VOLATILE}

    return {
        "feature_service": {"name": service, "features": svc["features"]},
        "feature_views": {n: keep(v) for n, v in stored.items()},
        "on_demand_feature_views": {n: keep(v) for n, v in computed.items()},
        "entities": {e: document["entities"].get(e) for e in entities},
    }


def definitions_digest(document: dict[str, Any], service: str) -> str:
    return digest(definitions_of(document, service))


def code_version_of(usecase: Any) -> dict[str, Any]:
    """The code version of a use case's runs: the platform's sources and, if it lives elsewhere, its own."""
    module = getattr(usecase.training_rows, "__module__", "") or ""
    return code_version((module,) if module else ())
