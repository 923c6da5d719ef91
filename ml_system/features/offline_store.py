"""Offline store: one Delta Lake table per source, on a local path or S3.

Delta rather than loose parquet because every table carries versions: a
training set records the versions it read and can be rebuilt exactly later
(time travel), however much data was appended since.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from ml_system.config import OfflineStoreConfig
from ml_system.errors import StoreError


class OfflineStore:
    def __init__(self, config: OfflineStoreConfig) -> None:
        self.root = config.uri.rstrip("/")
        self.storage_options = dict(config.storage_options) or None
        self._config = config

    def table_uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def exists(self, table: str) -> bool:
        try:
            DeltaTable(self.table_uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return True

    def version(self, table: str) -> int:
        try:
            return DeltaTable(self.table_uri(table), storage_options=self.storage_options).version()
        except TableNotFoundError as exc:
            raise StoreError(f"offline table '{table}' does not exist under {self.root}") from exc

    def schema(self, table: str, version: int | None = None) -> pa.Schema:
        try:
            dt = DeltaTable(self.table_uri(table), version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise StoreError(f"offline table '{table}' does not exist under {self.root}") from exc
        return pa.schema(dt.schema().to_arrow())

    def write_pandas(self, table: str, df: pd.DataFrame, mode: str = "append") -> int:
        """Write from the driver (small tables, tests); returns the new version."""
        if "://" not in self.root:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        write_deltalake(
            self.table_uri(table),
            pa.Table.from_pandas(df, preserve_index=False),
            mode=mode,  # type: ignore[arg-type]
            storage_options=self.storage_options,
        )
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
        if "://" not in self.root:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        properties = CommitProperties(
            custom_metadata={"mlsys.idempotency_key": app_id},
            app_transactions=[Transaction(app_id, 1, int(datetime.now(UTC).timestamp() * 1000))],
        )
        try:
            write_deltalake(
                self.table_uri(table),
                pa.Table.from_pandas(df, preserve_index=False),
                mode="append",
                storage_options=self.storage_options,
                commit_properties=properties,
            )
        except CommitFailedError:
            if self._committed(table, app_id):
                return False
            raise
        return True

    def _committed(self, table: str, app_id: str) -> bool:
        try:
            dt = DeltaTable(self.table_uri(table), storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return dt.transaction_version(app_id) is not None

    def write_dataset(self, table: str, ds: ray.data.Dataset, mode: str = "append") -> int:
        """Write from the cluster: each task writes parquet files, the driver commits once."""
        from ray.data import SaveMode

        if "://" not in self.root:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        save_mode = SaveMode.OVERWRITE if mode == "overwrite" else SaveMode.APPEND
        ds.write_delta(self.table_uri(table), mode=save_mode, storage_options=self.storage_options)
        return self.version(table)

    def read_dataset(
        self, table: str, version: int | None = None, columns: list[str] | None = None
    ) -> ray.data.Dataset:
        if not self.exists(table):
            raise StoreError(f"offline table '{table}' does not exist under {self.root}")
        kwargs: dict[str, Any] = {}
        if columns is not None:
            kwargs["columns"] = columns
        if self.storage_options:
            # Delta lists data files relative to the table, so the filesystem must be rooted there
            from pyarrow import fs

            root = self.table_uri(table).split("://", 1)[-1]
            kwargs["filesystem"] = fs.SubTreeFileSystem(root, _arrow_filesystem(self.storage_options))
        # storage_options reach the Delta log (versions, time travel), filesystem reaches the data files
        return ray.data.read_delta(
            self.table_uri(table), version=version, storage_options=self.storage_options, **kwargs
        )

    def max_timestamp(self, table: str, column: str) -> datetime | None:
        """Newest value of a timestamp column from Delta's per-file statistics: no data file is read."""
        dt = DeltaTable(self.table_uri(table), storage_options=self.storage_options)
        stats = pa.table(dt.get_add_actions(flatten=True))
        name = f"max.{column}"
        if name not in stats.column_names or stats.num_rows == 0:
            return None
        value = pc.max(stats.column(name)).as_py()
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def read_pandas(self, table: str, version: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        try:
            dt = DeltaTable(self.table_uri(table), version=version, storage_options=self.storage_options)
        except TableNotFoundError as exc:
            raise StoreError(f"offline table '{table}' does not exist under {self.root}") from exc
        return dt.to_pyarrow_table(columns=columns).to_pandas()


def _arrow_filesystem(options: dict[str, str]) -> Any:
    """Build a pyarrow S3 filesystem from deltalake-style storage options."""
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        endpoint_override=options.get("AWS_ENDPOINT_URL"),
        region=options.get("AWS_REGION", "us-east-1"),
        scheme="http" if options.get("AWS_ALLOW_HTTP", "").lower() == "true" else "https",
    )
