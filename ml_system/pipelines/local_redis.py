"""A throw-away ``redis-server`` on loopback with no persistence: for the quickstart's stream demo and the
benchmarks, so that neither ever reads or flushes anybody's data."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ml_system.serving.deploy import free_port


@contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free local port; yields its URL, stops it on exit."""
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server is not on the PATH")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mlsys-stream-") as workdir:
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen([*args, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            client.close()
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
