"""The OTLP exporter end to end: spans leave the process over real HTTP to a collector endpoint.

A fresh interpreter configures tracing (once per process, as a replica does)
and sends its spans to a minimal OTLP/HTTP receiver started here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

SCRIPT = """
from opentelemetry import trace
from ml_system.serving import tracing

tracing.configure("otlp")
with tracing.request_span("predict", {}):
    with tracing.span("features"):
        pass
    with tracing.span("model"):
        pass
trace.get_tracer_provider().force_flush()
"""


def test_spans_reach_an_otlp_http_collector() -> None:
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
    finally:
        server.shutdown()
    paths = {path for path, _ in received}
    assert paths == {"/v1/traces"}
    payload = b"".join(body for _, body in received)
    for name in (b"predict", b"features", b"model", b"ml_system.serving"):
        assert name in payload
