"""Delta tables on S3 (or an S3-compatible store that supports conditional writes).

deltalake 1.x commits a version by a conditional put of its log entry
(``If-None-Match: *``): of two writers racing for version N, S3 accepts one and
the other retries as N+1, so no commit is lost without any lock service (the
DynamoDB lock of older releases is gone, and ``AWS_S3_ALLOW_UNSAFE_RENAME`` is
refused by the config). A store that ignores the header would let the second
writer overwrite the first's commit: MinIO and AWS S3 (since 2024) honour it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ml_system.config import S3OfflineStoreConfig
from ml_system.features.offline.base import OfflineStore


class S3DeltaStore(OfflineStore):
    def __init__(self, config: S3OfflineStoreConfig, shared_paths: Sequence[str] = ()) -> None:
        super().__init__(config)
        self.storage_options = dict(config.storage_options)

    def _data_filesystem(self, table: str) -> Any:
        # Delta lists data files relative to the table, so the filesystem must be rooted there
        from pyarrow import fs

        root = self.table_uri(table).split("://", 1)[-1]
        return fs.SubTreeFileSystem(root, arrow_s3_filesystem(self.storage_options or {}))


def arrow_s3_filesystem(options: dict[str, str]) -> Any:
    """A pyarrow S3 filesystem from deltalake-style storage options."""
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"),
        endpoint_override=options.get("AWS_ENDPOINT_URL"),
        region=options.get("AWS_REGION", "us-east-1"),
        scheme="http" if options.get("AWS_ALLOW_HTTP", "").lower() == "true" else "https",
    )
