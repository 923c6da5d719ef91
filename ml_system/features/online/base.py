"""The online store interface: every backend implements these few methods.

As in Feast's ``OnlineStore``, adding a backend touches one module (and one line
of the table in ``online/__init__.py``). Writes are "upsert if newer" (by event
then created timestamp), which makes materialization idempotent and
order-independent: parallel writers, retried batches and resumed runs all
converge on the same latest row per entity.

Rows live in a *namespace*: the base one (``""``) or a snapshot's id. A
pointer in the store's meta values names the namespace readers use; readers
resolve it once per request and read every view from that one namespace, so
switching the pointer (one atomic meta write) never mixes old and new data.

Every read and meta call has a deadline (``read_timeout_s``): a store that does
not answer in time raises ``StoreUnavailableError`` instead of holding the
caller, and the next call tries again on a fresh connection.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from ml_system.errors import StoreError
from ml_system.features.online.codec import LEGACY, dump_fields, layout_id, layout_meta_name, load_fields


class FeatureStatus(enum.StrEnum):
    PRESENT = "present"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"


class OnlineRow(NamedTuple):
    """One entity's stored row: the view's values in the order its ``layout`` names.

    A named tuple rather than a frozen dataclass: a 100-row lookup builds 100
    of these, and a frozen dataclass's ``__init__`` costs twice as much.
    """

    event_ts: int  # nanoseconds since the epoch, UTC
    created_ts: int
    values: list[Any]
    layout: bytes = LEGACY  # codec.layout_id of the field names at write time


def entity_key(values: Sequence[Any]) -> str:
    """Serialise join-key values in key order; the same in every backend and process.

    A single key is its text. Composite parts are joined by ``|`` after escaping ``\\``
    and ``|`` inside each part, so ``('a|b', 'c')`` and ``('a', 'b|c')`` differ, while
    keys without those characters read as they always did (``1|nyc``): stored rows keep
    their keys. Values should be normalised first (``features/keys.py``).
    """
    if len(values) == 1:
        only = values[0]
        return "" if only is None else str(only)
    return "|".join("" if v is None else str(v).replace("\\", "\\\\").replace("|", "\\|") for v in values)


BASE = ""
ACTIVE_SNAPSHOT = "snapshot:active"
_SNAPSHOT_ID = re.compile(r"^[a-z0-9]{1,40}$")

MetaChange = Callable[[list[str | None]], Mapping[str, str | None]]


def check_snapshot_id(snapshot: str) -> str:
    """Snapshot ids become table names and key prefixes: keep them to safe characters."""
    if snapshot != BASE and not _SNAPSHOT_ID.match(snapshot):
        raise StoreError(f"snapshot id '{snapshot}' must be 1-40 lowercase letters or digits")
    return snapshot


class OnlineStore(ABC):
    config_model: ClassVar[Any] = None
    """The pydantic model of this backend's config (``type`` plus its own fields); a backend that
    lives outside the package sets it, so that a bad config fails when the config is loaded."""

    @classmethod
    def from_config(cls, config: Any) -> OnlineStore:
        """Open the store a validated config describes (``open_online_store`` calls this)."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_config")

    @abstractmethod
    def write_batch(
        self, view: str, rows: list[tuple[str, int, int, list[Any]]], snapshot: str = BASE, *, fields: Sequence[str]
    ) -> int:
        """Upsert ``(entity_key, event_ts_ns, created_ts_ns, values)`` into a namespace; newer rows win.

        ``fields`` names the values in order; backends call ``register_layout`` before writing.
        """

    @abstractmethod
    def read(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> list[OnlineRow | None]:
        """One round trip per view, however many keys."""

    @abstractmethod
    def delete(self, view: str, keys: Sequence[str], snapshot: str = BASE) -> int:
        """Remove entities' rows from a namespace; returns how many existed."""

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
    def meta_names(self) -> list[str]:
        """Every meta name (bookkeeping is small: pointers, catalog, watermarks, layouts)."""

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...

    @abstractmethod
    def set_meta_many(self, values: dict[str, str]) -> None:
        """Write several meta values at once: readers see all of them or none."""

    @abstractmethod
    def update_meta(self, names: Sequence[str], change: MetaChange) -> None:
        """Read ``names``, write what ``change`` returns (None deletes), as one atomic step.

        ``change`` may run more than once (an optimistic backend retries after a
        concurrent write), so it must only compute; it may raise to write nothing.
        Concurrent operators (snapshot catalog, history, pointer) lose nothing.
        """

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

    # ---- layouts: what the values of a stored row are called ----------------------------
    def register_layout(self, view: str, fields: Sequence[str]) -> bytes:
        """The layout id for ``fields``, recorded in meta before any row uses it (once per process)."""
        layout = layout_id(fields)
        known: set[tuple[str, bytes]] = self.__dict__.setdefault("_registered_layouts", set())
        if (view, layout) in known:
            return layout
        text = dump_fields(fields)
        name = layout_meta_name(view, layout)

        def change(values: list[str | None]) -> dict[str, str | None]:
            if values[0] is None:
                return {name: text}
            if values[0] != text:  # 32 bits of hash: refuse a collision rather than mislabel rows
                raise StoreError(f"view '{view}': layout id {layout.decode()} already names {values[0]}, not {text}")
            return {}

        self.update_meta([name], change)
        known.add((view, layout))
        return layout

    def layout_fields(self, view: str, layout: bytes) -> tuple[str, ...] | None:
        """Field names of a layout (None if unknown); cached, since a layout never changes once recorded."""
        cache: dict[tuple[str, bytes], tuple[str, ...]] = self.__dict__.setdefault("_layout_fields", {})
        found = cache.get((view, layout))
        if found is None:
            text = self.get_meta(layout_meta_name(view, layout))
            if text is None:
                return None
            found = cache[(view, layout)] = load_fields(text)
        return found

    def record_legacy_layout(self, view: str, fields: Sequence[str]) -> None:
        """Name the values of rows written before layouts existed (kept if already recorded)."""
        name = layout_meta_name(view, LEGACY)
        text = dump_fields(fields)
        self.update_meta([name], lambda values: {} if values[0] is not None else {name: text})

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
