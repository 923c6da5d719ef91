"""The online store interface: every backend implements these few methods.

As in Feast's ``OnlineStore``, adding a backend touches one module. Writes are
"upsert if newer" (by event then created timestamp), which makes
materialization idempotent and order-independent: parallel writers, retried
batches and resumed runs all converge on the same latest row per entity.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class FeatureStatus(enum.StrEnum):
    PRESENT = "present"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"


@dataclass(frozen=True)
class OnlineRow:
    """One entity's stored row: all of the view's values, in schema order."""

    event_ts: int  # nanoseconds since the epoch, UTC
    created_ts: int
    values: list[Any]


def entity_key(values: Sequence[Any]) -> str:
    """Serialise join-key values in key order; the same in every backend and process."""
    return "|".join("" if v is None else str(v) for v in values)


class OnlineStore(ABC):
    @abstractmethod
    def write_batch(self, view: str, rows: list[tuple[str, int, int, list[Any]]]) -> int:
        """Upsert ``(entity_key, event_ts_ns, created_ts_ns, values)``; newer rows win."""

    @abstractmethod
    def read(self, view: str, keys: Sequence[str]) -> list[OnlineRow | None]:
        """One round trip per view, however many keys."""

    @abstractmethod
    def get_meta(self, name: str) -> str | None:
        """Small bookkeeping values, such as a view's materialized-until timestamp."""

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
