"""The one piece of global state: the connection to the Ray cluster."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import ray

from ml_system.config import RayConfig
from ml_system.errors import ConfigError

log = logging.getLogger(__name__)


def quiet() -> None:
    """Keep Ray's and MLflow's INFO chatter out of a terminal that shows our own progress."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.data", "ray.tune", "ray.serve", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _local_cluster_alive(timeout_s: float = 1.0) -> bool:
    """Is the cluster that ``ray start`` recorded on this machine still listening?

    ``ray.init(address="auto")`` trusts that record, and a record left by a
    killed cluster makes it wait for a dead node instead of starting a new one.
    """
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        host, _, port = record.read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def connect(config: RayConfig) -> str:
    """Attach to the configured or running cluster, else start a local one.

    Returns the dashboard URL. A local start pins ``object_store_memory``:
    Ray's default took 7.5 GB of this 24 GB machine.
    """
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            # attaching prints two INFO lines on stderr, which would break a command's one-line error
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        elif _local_cluster_alive():
            ray.init(address="auto", log_to_driver=False, logging_level=logging.WARNING)
            log.info("attached to the running local Ray cluster")
        else:
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory,
                include_dashboard=True,
                dashboard_host=config.dashboard_host,
                log_to_driver=False,
            )
    ctx = ray.get_runtime_context()
    url = getattr(ctx, "dashboard_url", None) or ""
    if not url:
        try:
            url = ray._private.worker.global_worker.node.address_info.get("webui_url", "") or ""  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the URL is informative only
            url = ""
    return url if not url or url.startswith("http") else f"http://{url}"


def alive_nodes() -> int:
    """Nodes of the connected cluster that are alive; 1 when this process has not joined one (a
    Ray call made then starts a local, single-node cluster)."""
    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def refuse_node_local(action: str, locations: list[str]) -> None:
    """Refuse ``action`` on a cluster of several nodes while ``locations`` live on one node's disk.

    Tasks on another node would write and read their own copies there (an ``online.db``, Delta data
    files the driver's log names but cannot see) and nothing would fail. Checked before anything is
    written; one GCS call (``ray.nodes``), which is nothing beside the work it guards.
    """
    if not locations:
        return
    nodes = alive_nodes()
    if nodes > 1:
        raise ConfigError(
            f"cannot {action} on a cluster of {nodes} nodes: {'; '.join(locations)} "
            "is on one node's disk. Use s3:// locations and online_store.type redis, or list a mount that "
            "every node shares (NFS) in ray.shared_paths"
        )
