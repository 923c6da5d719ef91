"""Small JSON documents that survive crashes and concurrent writers: the ledger, the queue, token hashes.

A document is replaced, never edited in place: written to a temporary file in the same folder,
flushed to disk, then renamed over the old one (``os.replace`` is atomic on POSIX), so a reader
sees the old document or the new one and a crash leaves one of them whole. Read-modify-write
cycles take an exclusive ``flock`` on a sibling lock file, so two ``mlsys`` commands submitting
at once cannot lose each other's writes.

These documents live under the platform's state folder (``MLSYS_HOME``). SQLite would also do;
a JSON document a person can read with ``cat`` during an incident, of a few hundred records,
won out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ml_system.errors import TeamError

T = TypeVar("T")


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise TeamError(f"state file {path} is not valid JSON ({exc}); restore it from a backup") from None


def write_json(path: Path, document: Any) -> None:
    """Replace ``path`` atomically with ``document``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(document, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of ``path`` (advisory, between our own processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_json(path: Path, default: Any, change: Callable[[Any], T]) -> T:
    """Read, change (in place) and write back under the lock; returns what ``change`` returned."""
    with locked(path):
        document = read_json(path, default)
        result = change(document)
        write_json(path, document)
        return result
