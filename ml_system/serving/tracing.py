"""OpenTelemetry spans for ingress -> feature lookup -> model, exporter chosen by config.

Exporters: ``none`` (no spans are made: an SDK span costs tens of
microseconds, a measurable share of a sub-millisecond request; every response
still carries ``x-trace-id``, the caller's or a fresh one), ``console``, ``file:/path`` (one JSON
span per line; what the tests read) and ``otlp`` (needs
``opentelemetry-exporter-otlp-proto-http``, imported only when chosen; the
endpoint comes from the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``). When Serve's
own ``tracing_config`` is enabled, Serve installs the tracer provider first and
our spans join it instead of replacing it. Context crosses deployment handles
as a W3C ``traceparent`` carrier dict.
"""

from __future__ import annotations

import logging
import os
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
_enabled = False


class NoSpan:
    """Stands in for a span when tracing is off: same context-manager and attribute calls, no cost."""

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str = "") -> None:
        self.trace_id = trace_id

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NO_SPAN = NoSpan()


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
    global _configured, _enabled
    with _lock:
        if _configured is not None:
            if _configured != exporter:
                log.warning("tracing already configured with %r; ignoring %r", _configured, exporter)
            return
        from opentelemetry.sdk.trace import TracerProvider

        provider = trace.get_tracer_provider()
        serve_installed = isinstance(provider, TracerProvider)  # Serve's tracing_config sets one first
        if exporter != "none":
            if not serve_installed:
                provider = TracerProvider()
                trace.set_tracer_provider(provider)
            provider.add_span_processor(_span_processor(exporter))  # type: ignore[attr-defined]
        _enabled = exporter != "none" or serve_installed
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
    if not _enabled:
        return carrier
    _propagator.inject(carrier)
    return carrier


def span(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A child span of the current one, or a no-op when tracing is off."""
    if not _enabled:
        return _NO_SPAN
    return tracer().start_as_current_span(name, attributes=attributes)


def request_span(name: str, headers: Mapping[str, str]) -> Any:
    """The span of one request, continuing the caller's ``traceparent`` when there is one."""
    if _enabled:
        return tracer().start_as_current_span(name, context=extract(headers))
    parent = headers.get("traceparent", "")
    parts = parent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return NoSpan(parts[1].lower())
    return NoSpan(os.urandom(16).hex())


def current() -> trace.SpanContext | None:
    """The current span's context, to hand to a batch that runs in another task."""
    if not _enabled:
        return None
    return trace.get_current_span().get_span_context()


def batch_span(name: str, parents: list[trace.SpanContext | None], attributes: dict[str, Any]) -> Any:
    """A span for work done once for many requests: child of the first, linked to the others."""
    if not _enabled:
        return _NO_SPAN
    known = [p for p in parents if p is not None and p.is_valid]
    if not known:
        return tracer().start_as_current_span(name, attributes=attributes)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(known[0]))
    links = [trace.Link(p) for p in known[1:]]
    return tracer().start_as_current_span(name, context=ctx, links=links, attributes=attributes)


def trace_id(span: Any) -> str:
    if isinstance(span, NoSpan):
        return span.trace_id
    return format(span.get_span_context().trace_id, "032x")
