"""The app on a cluster started as the README starts one (``ray start``, HAProxy, ``serve deploy``).

The session's ``ray.init`` cluster has no HAProxy, so these tests start a private one-node
cluster of their own (``local_cluster.ServeCluster``) with the shipped config at two fixed
replicas. They count, never time: failed requests out of all requests when a replica is killed
under load, which sockets HAProxy listens on, and which HAProxy processes outlive their parent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ml_system.config import PlatformConfig
from ml_system.serving.loadgen import lua_script, read_report
from ml_system.serving.local_cluster import SHIPPED, ServeCluster
from ml_system.serving.settings import SERVED_BY_HEADER
from tests.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPLICAS = 2


def served_by(url: str, rows: list[dict[str, Any]], tries: int = 60) -> set[str]:
    seen = set()
    with httpx.Client(timeout=30) as client:
        for i in range(tries):
            resp = client.post(f"{url}/predict", json={"flights": [rows[i % len(rows)]]})
            if resp.status_code == 200:
                seen.add(resp.headers[SERVED_BY_HEADER])
    return seen


@pytest.fixture(scope="module")
def cluster(served_home: PlatformConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCluster]:
    doc = yaml.safe_load(SHIPPED.read_text())
    deployment = doc["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = REPLICAS
    deployment["ray_actor_options"] = {"num_cpus": 0.1}
    config = tmp_path_factory.mktemp("serve-config") / "flight_delay.yaml"
    config.write_text(yaml.safe_dump(doc))
    cluster = ServeCluster(served_home.home, config=config)
    try:
        cluster.start()
        cluster.deploy()
        wait_until(f"{REPLICAS} replicas running", lambda: len(cluster.replica_pids()) == REPLICAS)
        yield cluster
    finally:
        cluster.stop()


def start_wrk(
    url: str, rows: list[dict[str, Any]], seconds: int, connections: int, folder: Path
) -> subprocess.Popen[str]:
    script = lua_script(rows, folder / "predict.lua")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def test_killing_a_replica_under_load_fails_at_most_one_request_in_a_thousand(
    cluster: ServeCluster, demo_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed; scripts/setup.sh installs it")
    wait_until("both replicas answer", lambda: len(served_by(cluster.url, demo_rows)) == REPLICAS)
    victim = cluster.replica_pids()[0]
    load = start_wrk(cluster.url, demo_rows, seconds=30, connections=16, folder=tmp_path)
    wait_until("load under way", lambda: served_by(cluster.url, demo_rows, tries=3) != set(), timeout_s=30)
    time.sleep(5)  # let the load run on both replicas before one dies (not an assertion)
    os.kill(victim, signal.SIGKILL)
    out, _ = load.communicate(timeout=120)
    counts = read_report(out)
    print("replica killed under load:", counts)
    assert counts["requests"] > 1000, out
    assert counts["failed"] / counts["requests"] <= 0.001, out
    assert victim not in cluster.replica_pids()
    wait_until("Serve replaces the killed replica", lambda: len(cluster.replica_pids()) == REPLICAS)


def listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (IPv4 and IPv6), as ``/proc/net/tcp*`` shows them."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def haproxy_ports(cluster: ServeCluster) -> dict[str, int]:
    return {
        "stats": int(cluster.env["RAY_SERVE_HAPROXY_STATS_PORT"]),
        "metrics": int(cluster.env["RAY_SERVE_HAPROXY_METRICS_PORT"]),
        "serving": cluster.http_port,
    }


def test_haproxy_listens_on_loopback_keeps_its_admin_socket_private_and_dies_with_its_parent(
    cluster: ServeCluster,
) -> None:
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
    # Serve puts each node's files in a subfolder named after the node
    wait_until("admin socket exists", lambda: list(cluster.state.glob("*/admin.sock")))
    for sock in cluster.state.glob("*/admin.sock"):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600, sock
    ports = haproxy_ports(cluster)
    assert listening(ports["serving"]), "the app's port is not listening"
    loopback = {"0100007F", "00000000000000000000FFFF0100007F"}
    for name, port in ports.items():
        wider = [a for a in listening(port) if a not in loopback]
        assert not wider, f"{name} port {port} listens on {wider}"

    # the parent of HAProxy (Serve's proxy actor) dies hard: its HAProxy must not keep the port
    old = cluster.haproxy_pids()
    assert old
    parents = {_ppid(pid) for pid in old} - set(old)
    for parent in parents:
        os.kill(parent, signal.SIGKILL)
    wait_until("the orphaned HAProxy exits", lambda: not set(old) & set(cluster.haproxy_pids()), timeout_s=60)


def test_stopping_the_cluster_leaves_no_haproxy_holding_a_port(served_home: PlatformConfig) -> None:
    cluster = ServeCluster(served_home.home)
    ports = haproxy_ports(cluster)
    leaked: set[int] = set()
    try:
        cluster.start()
        cluster.deploy()
        haproxies = set(cluster.haproxy_pids())
        assert haproxies
        # what `ray stop` does: SIGTERM to the head, which stops the processes it started; HAProxy is
        # not among them (Serve's proxy actor started it), so only its own launcher can make it follow
        assert cluster.head is not None
        cluster.head.send_signal(signal.SIGTERM)
        cluster.head.wait(timeout=120)
        deadline = time.monotonic() + 60
        leaked = haproxies & set(cluster.haproxy_pids())
        while leaked and time.monotonic() < deadline:
            time.sleep(0.5)
            leaked = haproxies & set(cluster.haproxy_pids())
    finally:
        cluster.stop()
    assert not leaked, f"HAProxy {sorted(leaked)} outlived its cluster"
    for name, port in ports.items():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} port {port} still accepts connections"


def _ppid(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])
