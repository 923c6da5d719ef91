"""HAProxy's sockets stay private and within HAProxy's path limit wherever the platform home lives."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from ml_system.serving.haproxy_setup import MAX_SOCKET_PATH, NODE_ID_CHARS, haproxy_env

NODE_ID = "f" * NODE_ID_CHARS


def node_socket(env: dict[str, str], variable: str) -> str:
    """The path Serve gives a node's socket: the node id between the folder and the name."""
    folder, name = env[variable].rsplit("/", 1)
    return f"{folder}/{NODE_ID}/{name}"


def test_a_long_home_gets_its_sockets_in_a_short_private_folder(tmp_path: Path) -> None:
    state = tmp_path / ("a-long-user-name-" * 4) / ".mlsys" / "haproxy"
    env = haproxy_env(state)
    for variable in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        path = node_socket(env, variable)
        assert len(path) <= MAX_SOCKET_PATH, path
        folder = Path(env[variable]).parent
        assert folder != state and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == str(state / "haproxy.cfg")  # the rest stays in the home
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert haproxy_env(state)["RAY_SERVE_HAPROXY_SOCKET_PATH"] == env["RAY_SERVE_HAPROXY_SOCKET_PATH"]  # stable
    shutil.rmtree(Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent)


def test_a_short_home_keeps_its_sockets_beside_the_config(tmp_path: Path) -> None:
    state = Path("/tmp") / f"h{tmp_path.name[-6:]}"
    try:
        env = haproxy_env(state)
        assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(state / "admin.sock")
        assert len(node_socket(env, "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH")) <= MAX_SOCKET_PATH
    finally:
        shutil.rmtree(state, ignore_errors=True)
