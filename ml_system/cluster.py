"""The one piece of global state: the connection to the Ray cluster."""

from __future__ import annotations

import logging
import os

import ray

from ml_system.config import RayConfig

log = logging.getLogger(__name__)


def connect(config: RayConfig) -> str:
    """Attach to the configured or running cluster, else start a local one.

    Returns the dashboard URL. A local start pins ``object_store_memory``:
    Ray's default took 7.5 GB of this 24 GB machine.
    """
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            try:
                ray.init(address="auto", log_to_driver=False)
                log.info("attached to the running local Ray cluster")
            except (ConnectionError, RuntimeError):
                ray.init(
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
