"""Where registry versions live: one immutable object per version, created only once.

Optimistic concurrency instead of a lock: a writer reads version N, builds
N+1 and *creates* the object for N+1; if another writer created it first, the
create fails and the writer starts again from the newer version. That needs
only an exclusive create, which both places we store in offer without a lock
service:

- a local folder (or any POSIX mount): write a temporary file, then
  ``os.link`` it to the version's name, which fails if the name exists (and
  never exposes a half-written file);
- S3 (through s3fs): ``PutObject`` with ``If-None-Match: *`` (s3fs
  ``pipe_file(mode="create")``), which S3 decides atomically.

A lock file (``flock``) would serve a local folder but not S3 or an NFS mount
shared by a cluster, so one mechanism serves all.
"""

from __future__ import annotations

import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_system.config import REGISTRY_STORE_CLASS_FOR_TYPE, LocalRegistryConfig, RegistryConfig, S3RegistryConfig
from ml_system.errors import StoreError
from ml_system.features.backends import backend_class

_VERSION_FILE = re.compile(r"^(\d{10})\.json$")


def version_name(version: int) -> str:
    # zero-padded so that names sort like numbers in a listing
    return f"{version:010d}.json"


class VersionStore(ABC):
    """Immutable, numbered documents with an exclusive create."""

    def __init__(self, config: RegistryConfig, shared_paths: Sequence[str] = ()) -> None:
        self.config = config

    @abstractmethod
    def latest(self) -> int:
        """Highest version present, 0 when there is none."""

    @abstractmethod
    def read(self, version: int) -> bytes: ...

    @abstractmethod
    def create(self, version: int, data: bytes) -> bool:
        """Store ``data`` as ``version`` unless it exists; False if another writer got there first."""

    @abstractmethod
    def location(self, version: int) -> str:
        """Where ``version`` is stored, to name it in messages."""

    @staticmethod
    def _highest(names: list[str]) -> int:
        found = [int(m.group(1)) for m in (_VERSION_FILE.match(n.rsplit("/", 1)[-1]) for n in names) if m]
        return max(found, default=0)


class LocalVersionStore(VersionStore):
    """A folder on this machine or on a shared mount (NFS: ``link`` is atomic there too)."""

    def __init__(self, config: LocalRegistryConfig, shared_paths: Sequence[str] = ()) -> None:
        super().__init__(config, shared_paths)
        self.root = Path(config.uri) / "versions"

    def latest(self) -> int:
        if not self.root.exists():
            return 0
        return self._highest(os.listdir(self.root))

    def read(self, version: int) -> bytes:
        return (self.root / version_name(version)).read_bytes()

    def location(self, version: int) -> str:
        return str(self.root / version_name(version))

    def create(self, version: int, data: bytes) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666, not mkstemp (always 0600): the umask decides, as for any file the team
        # writes, so a group-shared folder stays readable to the group
        tmp = self.root / f".pending-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.root / version_name(version))
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)


def s3fs_options(options: dict[str, str]) -> dict[str, Any]:
    """Translate the ``AWS_*`` storage options deltalake takes into s3fs arguments."""
    client: dict[str, Any] = {}
    if options.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = options["AWS_ENDPOINT_URL"]
    if options.get("AWS_REGION"):
        client["region_name"] = options["AWS_REGION"]
    out: dict[str, Any] = {"client_kwargs": client, "skip_instance_cache": True}
    if options.get("AWS_ACCESS_KEY_ID"):
        out["key"] = options["AWS_ACCESS_KEY_ID"]
        out["secret"] = options.get("AWS_SECRET_ACCESS_KEY")
        if options.get("AWS_SESSION_TOKEN"):
            out["token"] = options["AWS_SESSION_TOKEN"]
    return out


class S3VersionStore(VersionStore):
    """S3 through s3fs; the exclusive create is the store's conditional put."""

    def __init__(self, config: S3RegistryConfig, shared_paths: Sequence[str] = ()) -> None:
        import fsspec

        super().__init__(config, shared_paths)
        self.fs = fsspec.filesystem("s3", **s3fs_options(config.storage_options))
        self.root = f"{config.uri.rstrip('/')}/versions"

    def latest(self) -> int:
        try:
            names = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return 0
        return self._highest(list(names))

    def read(self, version: int) -> bytes:
        return bytes(self.fs.cat_file(self.location(version)))

    def location(self, version: int) -> str:
        return f"{self.root}/{version_name(version)}"

    def create(self, version: int, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.location(version), data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot write registry version {version} under {self.root}: {exc}") from exc
        return True


def open_version_store(config: RegistryConfig, shared_paths: Sequence[str] = ()) -> VersionStore:
    cls = backend_class("registry", config.type, REGISTRY_STORE_CLASS_FOR_TYPE, VersionStore)
    return cls(config, shared_paths)
