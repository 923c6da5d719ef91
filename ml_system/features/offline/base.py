"""Offline store: one Delta Lake table per source; the backends (``local``, ``s3``) say where.

Delta rather than loose parquet because every table carries versions: a
training set records the versions it read and can be rebuilt exactly later
(time travel), however much data was appended since. The same versions tell
incremental materialization which rows arrived after its last run (``TableState``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from ml_system.config import OfflineStoreConfig
from ml_system.errors import StoreError

# a commit that lost to a concurrent table creation is retried this often (each retry re-reads the log)
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class TableState:
    """One version of a table and the data files it holds (paths relative to the table)."""

    table_id: str
    version: int
    files: frozenset[str]


class OfflineStore:
    """Delta tables under ``root``; subclasses supply storage options, filesystem and placement rules."""

    def __init__(self, config: OfflineStoreConfig, shared_paths: Sequence[str] = ()) -> None:
        self.root = config.uri.rstrip("/")
        self.storage_options: dict[str, str] | None = None
        self._config = config

    # ---- what a backend decides ----------------------------------------------------------------
    def _prepare_write(self) -> None:
        """Make the root exist where the storage needs it to (a local folder)."""

    def _data_filesystem(self, table: str) -> Any:
        """A pyarrow filesystem rooted at the table for Ray's readers, or None for the default."""
        return None

    def check_placement(self, action: str) -> None:
        """Refuse ``action`` where the tables' storage cannot serve every node of the cluster."""

    # ---- tables --------------------------------------------------------------------------------
    def table_uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _table(self, table: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.table_uri(table), version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise StoreError(f"offline table '{table}' does not exist under {self.root}") from exc

    def exists(self, table: str) -> bool:
        try:
            DeltaTable(self.table_uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return True

    def version(self, table: str) -> int:
        return self._table(table).version()

    def schema(self, table: str, version: int | None = None) -> pa.Schema:
        return pa.schema(self._table(table, version).schema().to_arrow())

    def table_state(self, table: str, version: int | None = None) -> TableState:
        """The table's identity, version and data files, read from the log (no data file is opened)."""
        dt = self._table(table, version)
        paths = pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist()
        return TableState(dt.metadata().id, dt.version(), frozenset(paths))

    def files_at(self, table: str, version: int) -> frozenset[str] | None:
        """Data files of an earlier version; None when that version can no longer be read (log cleaned up)."""
        try:
            return self.table_state(table, version).files
        except (StoreError, DeltaError, OSError):
            return None

    # ---- writing -------------------------------------------------------------------------------
    def write_pandas(self, table: str, df: pd.DataFrame, mode: str = "append") -> int:
        """Write from the driver (small tables, tests, pushes); returns the new version."""
        self._commit(table, df, mode)
        return self.version(table)

    def append_once(self, table: str, df: pd.DataFrame, app_id: str) -> bool:
        """Append ``df`` unless a commit carrying ``app_id`` is already in the table; returns whether it did.

        The id is recorded as a Delta application transaction (``txn``, the protocol's way to make
        writes idempotent: Spark's streaming sinks use it), read back from the table's snapshot
        without scanning its log. Two concurrent writers of the same id conflict in Delta, and the
        loser finds the winner's commit.
        """
        if self._committed(table, app_id):
            return False
        properties = CommitProperties(
            custom_metadata={"mlsys.idempotency_key": app_id},
            app_transactions=[Transaction(app_id, 1, int(datetime.now(UTC).timestamp() * 1000))],
        )
        return self._commit(table, df, "append", properties, app_id)

    def _commit(
        self,
        table: str,
        df: pd.DataFrame,
        mode: str,
        properties: CommitProperties | None = None,
        app_id: str | None = None,
    ) -> bool:
        self._prepare_write()
        data = pa.Table.from_pandas(df, preserve_index=False)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                write_deltalake(
                    self.table_uri(table),
                    data,
                    mode=mode,  # type: ignore[arg-type]
                    storage_options=self.storage_options,
                    commit_properties=properties,
                )
                return True
            except CommitFailedError as exc:
                # a writer that created the table at the same moment changed its protocol and metadata
                # under this commit, or one with the same application id won: the data files are
                # written, only the log entry must be tried again (or not at all)
                if app_id is not None and self._committed(table, app_id):
                    return False
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise StoreError(f"offline table '{table}': commit kept conflicting: {exc}") from exc
        return False

    def _committed(self, table: str, app_id: str) -> bool:
        try:
            dt = DeltaTable(self.table_uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return dt.transaction_version(app_id) is not None

    def write_dataset(self, table: str, ds: ray.data.Dataset, mode: str = "append") -> int:
        """Write from the cluster: each task writes parquet files, the driver commits once."""
        from ray.data import SaveMode

        self.check_placement(f"write offline table '{table}'")
        self._prepare_write()
        save_mode = SaveMode.OVERWRITE if mode == "overwrite" else SaveMode.APPEND
        if save_mode == SaveMode.APPEND:
            # Ray's Delta sink refuses to append pandas' large_string columns to the table's string ones
            ds = ds.map_batches(_narrow_large_types, batch_format="pyarrow")
        ds.write_delta(self.table_uri(table), mode=save_mode, storage_options=self.storage_options)
        return self.version(table)

    # ---- reading -------------------------------------------------------------------------------
    def read_dataset(
        self, table: str, version: int | None = None, columns: list[str] | None = None, include_paths: bool = False
    ) -> ray.data.Dataset:
        """Read on the cluster; ``include_paths`` adds each row's data file (relative to the table) as ``path``."""
        self.check_placement(f"read offline table '{table}'")
        if not self.exists(table):
            raise StoreError(f"offline table '{table}' does not exist under {self.root}")
        kwargs: dict[str, Any] = {"include_paths": include_paths}
        if columns is not None:
            kwargs["columns"] = columns
        filesystem = self._data_filesystem(table)
        if filesystem is not None:
            kwargs["filesystem"] = filesystem
        # storage_options reach the Delta log (versions, time travel), filesystem reaches the data files
        return ray.data.read_delta(
            self.table_uri(table), version=version, storage_options=self.storage_options, **kwargs
        )

    def max_timestamp(self, table: str, column: str) -> datetime | None:
        """Newest value of a timestamp column from Delta's per-file statistics: no data file is read."""
        stats = pa.table(self._table(table).get_add_actions(flatten=True))
        name = f"max.{column}"
        if name not in stats.column_names or stats.num_rows == 0:
            return None
        value = pc.max(stats.column(name)).as_py()
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def read_pandas(self, table: str, version: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        return self._table(table, version).to_pyarrow_table(columns=columns).to_pandas()


def _narrow_large_types(batch: pa.Table) -> pa.Table:
    """``large_string``/``large_binary`` columns as ``string``/``binary``: what Delta's types read back as."""
    narrow = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    if not any(field.type in narrow for field in batch.schema):
        return batch
    return batch.cast(pa.schema([f.with_type(narrow.get(f.type, f.type)) for f in batch.schema]))
