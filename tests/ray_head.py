"""A private ``ray start --head`` cluster for tests that need the job API (the session's ``ray.init`` one may
never register its job agent): free ports, its own temp folder and token, stopped by that folder alone."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ml_system.cluster import HeadNode, start_head, stop_head
from ml_system.serving.deploy import free_port

PORT_OPTIONS = (
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


@contextmanager
def private_head(num_cpus: int = 2, object_store_memory: int = 400_000_000) -> Iterator[tuple[HeadNode, Path]]:
    """The head node and its token file (made by the start, mode 0600)."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")  # short: Ray's Unix sockets live under it
    token_path = Path(temp_dir) / "auth_token"
    head = start_head(
        port=free_port(), dashboard_port=free_port(), num_cpus=num_cpus, object_store_memory=object_store_memory,
        temp_dir=temp_dir, ports={option: free_port() for option in PORT_OPTIONS}, token_path=token_path,
    )  # fmt: skip
    try:
        yield head, token_path
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
