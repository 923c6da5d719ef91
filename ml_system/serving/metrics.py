"""Serving metrics through ``ray.util.metrics``.

Ray exports these from every node's Prometheus endpoint as ``ray_<name>`` and
the dashboard (with Prometheus and Grafana) graphs them; a metrics library of
our own would need its own scrape target per replica. The objects are created
lazily, once per process, because ``ray.util.metrics`` needs a connected Ray
worker and replicas are the only processes that record.
"""

from __future__ import annotations

import functools

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class ServingMetrics:
    """The platform's serving metrics; names are what the Grafana dashboard queries."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.requests = metrics.Counter(
            "mlsys_serve_requests", "HTTP requests answered, by route and status code", tag_keys=("route", "status")
        )
        self.latency_ms = metrics.Histogram(
            "mlsys_serve_latency_ms",
            "Time from request read to response built inside the replica (ms)",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route",),
        )
        self.rows = metrics.Counter("mlsys_serve_rows", "Rows (flights) scored", tag_keys=("model_version",))
        self.batch_size = metrics.Histogram(
            "mlsys_serve_batch_size", "Rows per model call after @serve.batch", boundaries=BATCH_BOUNDARIES
        )
        self.cache = metrics.Counter(
            "mlsys_serve_cache_lookups", "Cache lookups by cache and result (hit|miss)", tag_keys=("cache", "result")
        )
        self.missing = metrics.Counter(
            "mlsys_serve_missing_features", "Rows scored with a feature view missing or expired", tag_keys=("view",)
        )
        self.model_version = metrics.Gauge(
            "mlsys_serve_model_version",
            "1 for the model version a replica serves (the version is the tag)",
            tag_keys=("model_name", "model_version", "device"),
        )

    def cache_lookups(self, cache: str, hits: int, misses: int) -> None:
        if hits:
            self.cache.inc(hits, tags={"cache": cache, "result": "hit"})
        if misses:
            self.cache.inc(misses, tags={"cache": cache, "result": "miss"})


@functools.cache
def serving_metrics() -> ServingMetrics:
    return ServingMetrics()


def record_request(route: str, status: int, latency_ms: float) -> None:
    m = serving_metrics()
    m.requests.inc(1, tags={"route": route, "status": str(status)})
    m.latency_ms.observe(latency_ms, tags={"route": route})
