"""A private one-node serving cluster, started the way the README starts one, and stopped without leftovers.

``ray start --head`` (dashboard included) on free ports with ``fast_serving_env`` (the HAProxy
ingress and Serve's throughput mode), then ``serve deploy`` of a Serve config such as the shipped
``serve_configs/flight_delay.yaml`` (only ``args.home`` and the HTTP port changed). ``--block``
keeps the head in a child process, so ``stop`` ends exactly this cluster, where ``ray stop``
would end every cluster on the machine. The serving benchmark and the failover, health and
listening-socket tests run against it: the session's ``ray.init`` cluster has no HAProxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from ml_system.serving.deploy import fast_serving_env, free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "serve_configs" / "flight_delay.yaml"
BIN = Path(sys.executable).parent


def serve_document(home: str, port: int, config: Path = SHIPPED) -> dict[str, Any]:
    """A Serve config pointed at a platform home and an HTTP port, as ``serve deploy`` would send it."""
    doc = yaml.safe_load(config.read_text())
    doc["http_options"]["port"] = port
    doc["applications"][0]["args"]["home"] = home
    return doc


def shipped_user_config(config: Path = SHIPPED) -> dict[str, Any]:
    return dict(yaml.safe_load(config.read_text())["applications"][0]["deployments"][0]["user_config"])


class ServeCluster:
    """A one-node Ray cluster of its own serving the shipped config; ``stop()`` leaves nothing behind."""

    def __init__(
        self, home: str, num_cpus: int = 2, extra_env: dict[str, str] | None = None, config: Path = SHIPPED
    ) -> None:
        self.home = home
        self.config = config
        self.num_cpus = num_cpus
        self.dir = Path(tempfile.mkdtemp(prefix="slb-", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.state = self.dir / "haproxy"
        self.env = {
            **os.environ,
            **fast_serving_env(self.state),
            "MLSYS_HOME": home,
            "PYTHONPATH": str(ROOT),
            "RAY_AUTH_MODE": "token",
            **(extra_env or {}),
        }
        self.http_port = free_port()
        self.dashboard_port = free_port()
        self.head: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 180) -> None:
        ports = {
            "--port": free_port(),
            "--dashboard-port": self.dashboard_port,
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(self.num_cpus),
               "--object-store-memory", "400000000", "--temp-dir", str(self.dir / "ray"),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]  # fmt: skip
        for flag, port in ports.items():
            cmd += [flag, str(port)]
        log = open(self.dir / "ray-start.log", "wb")
        self.head = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.head.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.dir / 'ray-start.log').read_text()[-2000:]}")
            try:
                # any answer will do: without the cluster's token the dashboard says 401
                httpx.get(f"http://127.0.0.1:{self.dashboard_port}/api/version", timeout=2)
                return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the Ray head did not come up")

    def deploy(self, timeout_s: float = 240) -> None:
        """``serve deploy`` of the shipped YAML, then wait until ``/healthz`` answers through HAProxy."""
        config = self.dir / "flight_delay.yaml"
        config.write_text(yaml.safe_dump(serve_document(self.home, self.http_port, self.config)))
        deadline = time.monotonic() + timeout_s
        while True:  # the dashboard's Serve endpoint comes up a little after the dashboard itself
            done = subprocess.run(
                [str(BIN / "serve"), "deploy", str(config), "-a", f"http://127.0.0.1:{self.dashboard_port}"],
                env=self.env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve deploy failed: {done.stderr[-2000:]}")
            time.sleep(2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the app did not become healthy at {self.url}")

    def replica_pids(self) -> list[int]:
        return [p for p in self.pids() if _cmdline(p).startswith("ray::ServeReplica")]

    def haproxy_pids(self) -> list[int]:
        """HAProxy processes of this cluster (their command line names its private config)."""
        return [pid for pid in _all_pids() if str(self.state) in _cmdline(pid) and "haproxy" in _cmdline(pid)]

    def pids(self) -> list[int]:
        """The head and every process below it, and this cluster's HAProxy."""
        parents: dict[int, list[int]] = {}
        for pid in _all_pids():
            parents.setdefault(_ppid(pid), []).append(pid)
        found: set[int] = set()
        todo = ([self.head.pid] if self.head else []) + self.haproxy_pids()
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(parents.get(pid, []))
        return sorted(found)

    def stop(self) -> None:
        leftovers = {pid: _cmdline(pid) for pid in self.pids()}
        if self.head is not None and self.head.poll() is None:
            os.killpg(self.head.pid, signal.SIGTERM)  # --block: the head stops every process it started
            try:
                self.head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.head.pid, signal.SIGKILL)
                self.head.wait(timeout=30)
        time.sleep(1)
        leftovers.update({pid: _cmdline(pid) for pid in self.haproxy_pids()})
        for pid, cmd in leftovers.items():
            if cmd and _cmdline(pid) == cmd:  # still the process this cluster started, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
