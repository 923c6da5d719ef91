"""Delta tables under a local path: this machine's disk, or a mount that every node shares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ml_system.cluster import refuse_node_local
from ml_system.config import LocalOfflineStoreConfig
from ml_system.features.offline.base import OfflineStore


class LocalDeltaStore(OfflineStore):
    """On a multi-node cluster each node's tasks would write data files to their own disk while the
    driver commits a log naming them all, so cluster reads and writes are refused unless the path
    lies under ``ray.shared_paths``."""

    def __init__(self, config: LocalOfflineStoreConfig, shared_paths: Sequence[str] = ()) -> None:
        super().__init__(config)
        self.shared = any(Path(self.root).resolve().is_relative_to(p) for p in shared_paths)

    def _prepare_write(self) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)

    def check_placement(self, action: str) -> None:
        if not self.shared:
            refuse_node_local(action, [f"offline_store.uri {self.root}"])
