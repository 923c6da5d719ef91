"""Durable pipeline state: run history, the step cache, artifacts and scheduler claims.

Everything a later step, a later run or another scheduler needs lives here, under the platform's
storage (``pipelines.uri``: ``<home>/pipelines`` or ``s3://...``), never on one node's disk or in a
process's memory. Two operations carry the guarantees:

- ``write`` replaces an object whole (a temporary file renamed over it; one PUT on S3), so a
  reader never sees half a history record;
- ``create`` stores an object only if it does not exist yet, which one writer wins: a hard link
  locally (as the feature registry's versions), a conditional put (``If-None-Match: *``) on S3.
  A scheduler's claim of a slot and a cache entry are such creates, so two schedulers never both
  fire a slot and two runs never both record a step.

A key-value store (Redis) would have served claims, but not artifacts of tens of megabytes, and
it would be one more service that must stay up for runs to be reproducible.
"""

from __future__ import annotations

import os
import secrets
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ml_system.cluster import refuse_node_local
from ml_system.config import PlatformConfig
from ml_system.config_pipelines import scheme_of
from ml_system.errors import StoreError
from ml_system.features.registry.storage import s3fs_options


class PipelineStorage(ABC):
    """Objects under ``/``-separated keys."""

    root: str

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object's bytes; None when there is none."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` whole, replacing what was there."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` unless the key exists; False if another writer got there first."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix/`` (recursively), sorted."""

    def location(self, key: str) -> str:
        return f"{self.root}/{key}"


class LocalStorage(PipelineStorage):
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self._root = Path(root)

    def read(self, key: str) -> bytes | None:
        try:
            return (self._root / key).read_bytes()
        except FileNotFoundError:
            return None

    def _staged(self, key: str, data: bytes) -> Path:
        path = self._root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".pending-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def write(self, key: str, data: bytes) -> None:
        os.replace(self._staged(key, data), self._root / key)

    def create(self, key: str, data: bytes) -> bool:
        tmp = self._staged(key, data)
        try:
            os.link(tmp, self._root / key)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def list(self, prefix: str) -> list[str]:
        base = self._root / prefix
        if not base.is_dir():
            return []
        found = []
        for folder, _, files in os.walk(base):
            rel = Path(folder).relative_to(self._root)
            found.extend(str(rel / name) for name in files if not name.startswith(".pending-"))
        return sorted(found)


class S3Storage(PipelineStorage):
    def __init__(self, root: str, options: dict[str, str]) -> None:
        import fsspec

        self.root = root.rstrip("/")
        self.fs = fsspec.filesystem("s3", **s3fs_options(options))
        self._bucket_path = self.root.split("://", 1)[1]

    def read(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self.location(key)))
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self.location(key), data)
        except OSError as exc:
            raise StoreError(f"cannot write {self.location(key)}: {exc}") from exc

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.location(key), data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot create {self.location(key)}: {exc}") from exc
        return True

    def list(self, prefix: str) -> list[str]:
        try:
            names: Any = self.fs.find(f"{self._bucket_path}/{prefix}".rstrip("/"))
        except FileNotFoundError:
            return []
        return sorted(str(n)[len(self._bucket_path) + 1 :] for n in names)


def open_storage(config: PlatformConfig) -> PipelineStorage:
    """The pipelines' storage; a path on one node's disk is refused on a multi-node cluster."""
    uri = config.pipelines.uri
    if scheme_of(uri) in ("s3", "s3a"):
        return S3Storage(uri, config.pipelines.storage_options)
    refuse_node_local("keep pipeline state", config.node_local_locations(("pipelines",)))
    return LocalStorage(uri)
