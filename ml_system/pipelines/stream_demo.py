"""The quickstart's stream step: a burst of events through the consumer group changes what the app answers.

The embedded defaults have no broker, so the step starts a private ``redis-server`` (a child
process on a free port, nothing persisted) as the stream and the window state, runs one consumer
of the real group (``group.start``, a Ray actor) writing into the configured online store, and
stops both afterwards. Without a ``redis-server`` on the PATH the step is skipped and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from ml_system.config import PlatformConfig
from ml_system.features.streaming import group
from ml_system.features.streaming.sources import open_stream_source
from ml_system.pipelines.local_redis import private_redis
from ml_system.serving.settings import ScorerSettings
from ml_system.usecase import StreamDemo

CONSUMER_CPUS = 0.1  # the demo's consumer idles most of the time; Serve replicas hold the cores
GROUP = "mlsys-quickstart"  # never the operator's own group, whose consumers read another broker


@dataclass
class BurstReport:
    """Each item's answer before and after the burst; ``note`` says why the step was skipped."""

    label: str
    field: str
    items: list[dict[str, Any]]
    before: list[float]
    after: list[float]
    events: int
    ingest_s: float
    note: str = ""


def with_broker(config: PlatformConfig, url: str) -> PlatformConfig:
    """The platform config with its stream and window state on ``url`` and a one-consumer group."""
    update = {"broker_url": url, "state_url": url, "group": GROUP, "consumers": 1, "consumer_cpus": CONSUMER_CPUS}
    streaming = config.streaming.model_copy(update={**update, "block_ms": 20})
    return config.model_copy(update={"streaming": streaming})


def score(url: str, items_field: str, items: list[dict[str, Any]], field: str) -> list[float]:
    """One request with every item; returns ``field`` of each answer."""
    resp = httpx.post(f"{url}/predict", json={items_field: items}, timeout=30)
    resp.raise_for_status()
    return [float(p[field]) for p in resp.json()["predictions"]]


def ingest(config: PlatformConfig, messages: list[dict[str, str]], timeout_s: float = 60.0) -> float:
    """Publish ``messages`` and run the consumer group until it has handled them all; returns the seconds it took."""
    t0 = time.perf_counter()
    group.start(config)
    try:
        source = open_stream_source(config.streaming)
        try:
            source.publish(messages)
        finally:
            source.close()
        deadline = time.monotonic() + timeout_s
        while True:
            consumers = group.status(config)["consumers"].values()
            handled = sum(c.get("events", 0) + c.get("dead_lettered", 0) for c in consumers)
            if handled >= len(messages):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream consumers handled {handled} of {len(messages)} events in {timeout_s} s")
            time.sleep(0.1)
    finally:
        group.stop(config)
    return time.perf_counter() - t0


def run_burst(
    config: PlatformConfig, demo: StreamDemo, url: str, items_field: str, settings: ScorerSettings
) -> BurstReport:
    """Score ``demo.items``, stream the history and the burst, wait out the replicas' caches, score again."""
    before = score(url, items_field, demo.items, demo.score_field)
    events = len(demo.history) + len(demo.burst)
    try:
        with private_redis() as broker:
            took = ingest(with_broker(config, broker), [*demo.history, *demo.burst])
    except FileNotFoundError as exc:
        return BurstReport(demo.label, demo.score_field, demo.items, before, before, 0, 0.0, note=f"skipped: {exc}")
    # a replica serves a cached row or answer for at most its caches' TTL after a newer row is written
    time.sleep(max(settings.feature_cache_ttl_s, settings.prediction_cache_ttl_s) + 0.2)
    after = score(url, items_field, demo.items, demo.score_field)
    return BurstReport(demo.label, demo.score_field, demo.items, before, after, events, took)


def describe(report: BurstReport) -> str:
    """``EWR burst (...): delay_probability 0.21 -> 0.47 (UA 1545 EWR-IAH); mean over 12 flights 0.20 -> 0.41``."""
    if report.note or not report.items:
        return f"{report.label}: {report.note or 'no flights to re-score'}"
    first = report.items[0]
    who = " ".join(str(first[k]) for k in ("carrier", "flight", "origin", "dest") if k in first)
    line = f"{report.label}: {report.field} {report.before[0]:.2f} -> {report.after[0]:.2f} ({who})"
    if len(report.items) > 1:
        mean_before = sum(report.before) / len(report.before)
        mean_after = sum(report.after) / len(report.after)
        line += f"; mean over its {len(report.items)} flights {mean_before:.2f} -> {mean_after:.2f}"
    return line + f"; {report.events:,} events streamed and ingested in {report.ingest_s:.1f} s"
