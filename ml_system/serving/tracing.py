"""OpenTelemetry spans for ingress -> feature lookup -> model, exporter chosen by config.

Exporters: ``none`` (spans still get ids, so every response carries
``x-trace-id``, but nothing is exported), ``console``, ``file:/path`` (one JSON
span per line; what the tests read) and ``otlp`` (needs
``opentelemetry-exporter-otlp-proto-http``, imported only when chosen; the
endpoint comes from the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``). When Serve's
own ``tracing_config`` is enabled, Serve installs the tracer provider first and
our spans join it instead of replacing it. Context crosses deployment handles
as a W3C ``traceparent`` carrier dict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ml_system.errors import ConfigError

log = logging.getLogger("ml_system.serving")
TRACER_NAME = "ml_system.serving"
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured: str | None = None


def _span_processor(exporter: str) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter.startswith("file:"):
        out = open(exporter[len("file:") :], "a", buffering=1)
        return SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n"))
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigError(
                "tracing exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http; pip install 'ml_system[otlp]'"
            ) from exc
        return BatchSpanProcessor(OTLPSpanExporter())
    raise ConfigError(f"tracing exporter '{exporter}' is not one of none, console, file:PATH, otlp")


def configure(exporter: str = "none") -> None:
    """Install a tracer provider once per process (replicas call this in ``__init__``)."""
    global _configured
    with _lock:
        if _configured is not None:
            if _configured != exporter:
                log.warning("tracing already configured with %r; ignoring %r", _configured, exporter)
            return
        from opentelemetry.sdk.trace import TracerProvider

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # Serve's tracing_config may have set one already
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        if exporter != "none":
            provider.add_span_processor(_span_processor(exporter))
        _configured = exporter


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def extract(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The caller's context from a ``traceparent`` header or carrier, if any."""
    if not headers or "traceparent" not in headers:
        return None
    return _propagator.extract(carrier=dict(headers))


def inject() -> dict[str, str]:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def trace_id(span: trace.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")
