"""Serving metrics through ``ray.util.metrics``.

Ray exports these from every node's Prometheus endpoint as ``ray_<name>`` and
the dashboard (with Prometheus and Grafana) graphs them; a metrics library of
our own would need its own scrape target per replica. The objects are created
lazily, once per process, because ``ray.util.metrics`` needs a connected Ray
worker and replicas are the only processes that record.

Every metric carries the Serve application (``app``) and the model version the
replica serves (``model_version``) as default tags, set when the replica loads
its model, so two use cases on one cluster, or two versions during a rollout,
are told apart on the same graph.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DEFAULT_TAGS = ("app", "model_version")
COUNT_FLUSH_S = 0.5
"""Request counts are summed in the replica and recorded at most this often: a ``Counter.inc`` costs
tens of microseconds, a visible share of a sub-millisecond request (docs/serving.md)."""


class ServingMetrics:
    """The platform's serving metrics; names are what the Grafana dashboard queries."""

    def __init__(self) -> None:
        from ray.util import metrics

        def keys(*extra: str) -> tuple[str, ...]:
            return (*DEFAULT_TAGS, *extra)

        self.requests = metrics.Counter(
            "mlsys_serve_requests", "HTTP requests answered, by route and status code", tag_keys=keys("route", "status")
        )
        self.latency_ms = metrics.Histogram(
            "mlsys_serve_latency_ms",
            "Time from request read to response built inside the replica (ms)",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=keys("route"),
        )
        self.rows = metrics.Counter("mlsys_serve_rows", "Rows scored", tag_keys=keys())
        self.batch_size = metrics.Histogram(
            "mlsys_serve_batch_size", "Rows per model call after @serve.batch", boundaries=BATCH_BOUNDARIES,
            tag_keys=keys(),
        )  # fmt: skip
        self.cache = metrics.Counter(
            "mlsys_serve_cache_lookups",
            "Cache lookups by cache and result (hit|miss)",
            tag_keys=keys("cache", "result"),
        )
        self.missing = metrics.Counter(
            "mlsys_serve_missing_features", "Rows scored with a feature view missing or expired", tag_keys=keys("view")
        )
        self.model_version = metrics.Gauge(
            "mlsys_serve_model_version",
            "1 for the model version a replica serves (the version is the tag)",
            tag_keys=keys("model_name", "device"),
        )
        self._all: list[Any] = [
            self.requests, self.latency_ms, self.rows, self.batch_size, self.cache, self.missing, self.model_version,
        ]  # fmt: skip
        self.app = ""
        self.version = ""
        self._counts: dict[tuple[str, str], int] = {}
        self._tag()

    def _tag(self) -> None:
        for metric in self._all:
            metric.set_default_tags({"app": self.app, "model_version": self.version})

    def for_app(self, app: str) -> None:
        self.app = app
        self._tag()

    def serving(self, model_name: str, model_version: str, device: str) -> None:
        """The replica now serves this version: later samples carry it."""
        self.version = model_version
        self._tag()
        self.model_version.set(1, tags={"model_name": model_name, "device": device})

    def cache_lookups(self, cache: str, hits: int, misses: int) -> None:
        if hits:
            self.cache.inc(hits, tags={"cache": cache, "result": "hit"})
        if misses:
            self.cache.inc(misses, tags={"cache": cache, "result": "miss"})

    def count_request(self, route: str, status: int) -> None:
        """Count a request; the sums reach ``requests`` within ``COUNT_FLUSH_S`` (at once outside an event loop)."""
        key = (route, str(status))
        first = not self._counts
        self._counts[key] = self._counts.get(key, 0) + 1
        if first:
            try:
                asyncio.get_running_loop().call_later(COUNT_FLUSH_S, self.flush_counts)
            except RuntimeError:
                self.flush_counts()

    def flush_counts(self) -> None:
        counts, self._counts = self._counts, {}
        for (route, status), n in counts.items():
            self.requests.inc(n, tags={"route": route, "status": status})


@functools.cache
def serving_metrics() -> ServingMetrics:
    return ServingMetrics()


def record_request(route: str, status: int, latency_ms: float) -> None:
    m = serving_metrics()
    m.count_request(route, status)
    m.latency_ms.observe(latency_ms, tags={"route": route})
