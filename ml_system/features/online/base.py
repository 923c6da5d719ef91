"""The online store interface: every backend implements these few methods.

As in Feast's ``OnlineStore``, adding a backend touches one module. Writes are
"upsert if newer" (by event then created timestamp), which makes
materialization idempotent and order-independent: parallel writers, retried
batches and resumed runs all converge on the same latest row per entity.

Rows live in a *namespace*: the base one (``""``) or a snapshot's id. A
pointer in the store's meta values names the namespace readers use; readers
resolve it once per request and read every view from that one namespace, so
switching the pointer (one atomic meta write) never mixes old and new data.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

from ml_system.errors import StoreError


class FeatureStatus(enum.StrEnum):
    PRESENT = "present"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"


class OnlineRow(NamedTuple):
    """One entity's stored row: all of the view's values, in schema order.

    A named tuple rather than a frozen dataclass: a 100-row lookup builds 100
    of these, and a frozen dataclass's ``__init__`` costs twice as much.
    """

    event_ts: int  # nanoseconds since the epoch, UTC
    created_ts: int
    values: list[Any]


def entity_key(values: Sequence[Any]) -> str:
    """Serialise join-key values in key order; the same in every backend and process."""
    return "|".join("" if v is None else str(v) for v in values)


BASE = ""
ACTIVE_SNAPSHOT = "snapshot:active"
_SNAPSHOT_ID = re.compile(r"^[a-z0-9]{1,40}$")


def check_snapshot_id(snapshot: str) -> str:
    """Snapshot ids become table names and key prefixes: keep them to safe characters."""
    if snapshot != BASE and not _SNAPSHOT_ID.match(snapshot):
        raise StoreError(f"snapshot id '{snapshot}' must be 1-40 lowercase letters or digits")
    return snapshot


class OnlineStore(ABC):
    @abstractmethod
    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE) -> int:
        """Upsert ``(entity_key, event_ts_ns, created_ts_ns, values)`` into a namespace; newer rows win."""

    @abstractmethod
    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        """One round trip per view, however many keys."""

    @abstractmethod
    def drop_snapshot(self, snapshot: str) -> None:
        """Delete every row of a snapshot's namespace (never the base one)."""

    @abstractmethod
    def get_meta(self, name: str) -> str | None:
        """Small bookkeeping values, such as a view's materialized-until timestamp."""

    def get_meta_many(self, names: Sequence[str]) -> list[str | None]:
        """Several meta values in one read where the backend can (a replica's data version is five)."""
        return [self.get_meta(name) for name in names]

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...

    @abstractmethod
    def set_meta_many(self, values: dict[str, str]) -> None:
        """Write several meta values at once: readers see all of them or none."""

    def active_snapshot(self) -> str:
        """The namespace readers use now; resolve once per request."""
        return self.get_meta(ACTIVE_SNAPSHOT) or BASE

    def read_views(
        self, requests: Sequence[tuple[str, Sequence[str]]], snapshot: str | None = None
    ) -> list[list[OnlineRow | None]]:
        """Read several views from one namespace: ``snapshot``, or the one active *now*.

        The default resolves the pointer, then reads view by view; a backend
        with transactions can do both in one round trip. A caller that has
        already resolved the pointer (a cache keyed on it) passes it, so its
        keys and its rows name the same namespace.
        """
        if snapshot is None:
            snapshot = self.active_snapshot()
        return [self.read(view, keys, snapshot) for view, keys in requests]

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
