"""A consumer group of Ray actors: started, inspected and stopped by name from any process.

Each actor runs one ``StreamIngestor`` on a thread of its own, so ``status`` answers while it
reads. Actors are detached and named ``<group>/<n>`` in the ``mlsys-stream`` namespace: ``mlsys
stream status`` in another process finds them, and Ray restarts one that dies (``max_restarts``);
until it is back, the others claim what it held. Consumers keep no state, so a restarted or a
replacement actor needs no hand-over.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import ray

from ml_system.config import PlatformConfig
from ml_system.errors import ConfigError
from ml_system.features.online import open_online_store
from ml_system.features.registry import Registry
from ml_system.features.streaming.consumer import StreamIngestor
from ml_system.features.streaming.sources import BrokerUnavailableError, open_stream_source
from ml_system.features.streaming.state import WindowState
from ml_system.features.streaming.views import StreamFeatureView, stream_views

NAMESPACE = "mlsys-stream"


def fed_views(config: PlatformConfig) -> list[StreamFeatureView]:
    """The registered stream views this stream feeds; refuses a group that would have nothing to do."""
    streaming = config.streaming
    registry = Registry(config.registry, shared_paths=config.ray.shared_paths)
    views = stream_views(registry.feature_views(), streaming.stream, streaming.views or None)
    if not views:
        raise ConfigError(
            f"no stream feature views are registered for stream '{streaming.stream}': apply some, or list them in "
            "streaming.views"
        )
    return views


def open_ingestor(config: PlatformConfig, name: str) -> StreamIngestor:
    """A consumer wired from the platform config: registered views, broker, window state, online store."""
    streaming = config.streaming
    views = fed_views(config)
    if not streaming.state_url:
        raise ConfigError("streaming.state_url is empty: name the Redis that holds the window state")
    state = WindowState(streaming.state_url, streaming.state_prefix, streaming.request_timeout_s)
    return StreamIngestor(
        name,
        streaming,
        views,
        open_stream_source(streaming),
        state,
        open_online_store(config.online_store),
        max_future_skew_s=config.features.max_future_skew_s,
    )


@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)
class StreamConsumer:
    def __init__(self, config: PlatformConfig, name: str) -> None:
        self.ingestor = open_ingestor(config, name)
        # Everything imported so far lives as long as the actor: keep the garbage collector from
        # walking it again and again (its full passes over Ray's and pandas' objects cost the
        # ingestion loop about as much as the work itself here)
        gc.collect()
        gc.freeze()
        self.thread = threading.Thread(target=self.ingestor.run, name=f"stream-{name}", daemon=True)
        self.thread.start()

    def status(self) -> dict[str, Any]:
        status = self.ingestor.snapshot_status()
        status["alive"] = self.thread.is_alive()
        return status

    def freshness_ns(self, clear: bool = False) -> list[int]:
        samples = list(self.ingestor.freshness_ns)
        if clear:
            self.ingestor.freshness_ns.clear()
        return samples

    def pid(self) -> int:
        return os.getpid()

    def cpu_s(self) -> float:
        """CPU seconds this consumer's process has used (benchmarks divide it by the events)."""
        return time.process_time()

    def stop(self, timeout_s: float = 10.0) -> bool:
        self.ingestor.stop()
        self.thread.join(timeout_s)
        return not self.thread.is_alive()


def consumer_name(group: str, n: int) -> str:
    return f"{group}/{n}"


def start(config: PlatformConfig, consumers: int | None = None) -> list[str]:
    """Start the group's missing consumers (``streaming.consumers`` of them); returns every consumer's name."""
    count = consumers or config.streaming.consumers
    fed_views(config)
    source = open_stream_source(config.streaming)
    try:
        source.ensure_group()
    finally:
        source.close()
    names = []
    for n in range(count):
        name = consumer_name(config.streaming.group, n)
        StreamConsumer.options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=config.streaming.consumer_cpus,
        ).remote(config, name)
        names.append(name)
    return names


def handles(group: str) -> dict[str, Any]:
    """The group's live consumer actors, by name."""
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(f"{group}/"):
            try:
                found[entry["name"]] = ray.get_actor(entry["name"], namespace=NAMESPACE)
            except ValueError:
                continue  # went away between the listing and the lookup
    return dict(sorted(found.items()))


def status(config: PlatformConfig, timeout_s: float = 10.0) -> dict[str, Any]:
    """Every consumer's status (or why it did not answer) and the group's backlog on the broker."""
    consumers = {}
    for name, actor in handles(config.streaming.group).items():
        try:
            consumers[name] = ray.get(actor.status.remote(), timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            consumers[name] = {"consumer": name, "state": "unreachable", "last_error": str(exc).splitlines()[0]}
    source = open_stream_source(config.streaming)
    try:
        backlog: dict[str, Any] = source.backlog()
    except BrokerUnavailableError as exc:
        backlog = {"error": str(exc)}
    finally:
        source.close()
    return {
        "stream": config.streaming.stream,
        "group": config.streaming.group,
        "consumers": consumers,
        "backlog": backlog,
    }


def stop(config: PlatformConfig, timeout_s: float = 30.0) -> list[str]:
    """Stop every consumer after its current batch, then remove the actors; returns their names."""
    found = handles(config.streaming.group)
    waits = {name: actor.stop.remote() for name, actor in found.items()}
    for name, ref in waits.items():
        try:
            ray.get(ref, timeout=timeout_s)
        except (ray.exceptions.RayError, TimeoutError):
            pass  # killed below either way; its unacked entries stay pending for the next start
        ray.kill(found[name], no_restart=True)
    return list(found)
