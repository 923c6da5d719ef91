"""The consumer group on Ray: consumers die mid-stream, and every aggregate still counts each event once."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import ray

from ml_system.features import FeatureStore
from ml_system.features.streaming import group
from ml_system.features.streaming.sources import open_stream_source
from ml_system.features.streaming.windows import offline_rows
from tests.features.streaming.conftest import (
    MERCHANT,
    USER,
    RedisServer,
    as_messages,
    payment_events,
    payment_views,
    same,
    stream_config,
)


def wait_until(what: str, check: object, deadline_s: float = 120.0) -> None:
    """Poll ``check`` until true; a deadline only so that a broken build fails instead of hanging."""
    end = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.2)


def exact_mismatches(store: FeatureStore, views: list, events: pd.DataFrame) -> list[tuple]:
    """Every (view, entity, feature) whose online value differs from the value over all events, counted once."""
    wrong = []
    for view in views:
        expected = offline_rows(view, events)
        column = view.join_keys[0]
        latest = expected.sort_values("event_timestamp").groupby(expected[column].astype(str)).tail(1)
        keys = latest[column].astype(str).tolist()
        for key, row, got in zip(keys, latest.itertuples(index=False), store.online.read(view.name, keys), strict=True):
            if got is None:
                wrong.append((view.name, key, "missing"))
                continue
            if got.event_ts != row.event_timestamp.value:
                wrong.append((view.name, key, "event time", got.event_ts, row.event_timestamp.value))
            for name, value in zip(view.feature_names, got.values, strict=True):
                if not same(value, getattr(row, name)):
                    wrong.append((view.name, key, name, value, getattr(row, name)))
    return wrong


def test_killed_consumers_lose_nothing_and_count_nothing_twice(
    tmp_path: Path, private_redis: RedisServer, ray_cluster: str
) -> None:
    config = stream_config(
        tmp_path / "mlsys",
        private_redis.url,
        consumers="3",
        claim_idle_ms="1000",
        claim_every_s="0.2",
        consumer_cpus="0.25",
    )
    store = FeatureStore(config)
    views = payment_views(lateness=timedelta(hours=24))  # a redelivery comes back late in event time
    store.apply([USER, MERCHANT, *views])
    events = payment_events(3000, seed=11)
    source = open_stream_source(config.streaming)
    names = group.start(config)
    try:
        handles = group.handles(config.streaming.group)
        assert sorted(handles) == sorted(names)
        wait_until(
            "consumers running",
            lambda: all(s.get("state") == "running" for s in group.status(config)["consumers"].values()),
        )
        victim_pid = ray.get(handles[names[1]].pid.remote())
        messages = as_messages(events)
        for start in range(0, len(messages), 100):
            source.publish(messages[start : start + 100])
            if start == 1000:
                ray.kill(handles[names[0]], no_restart=True)  # gone for good: the others claim what it held
            if start == 1500:
                os.kill(victim_pid, signal.SIGKILL)  # the process dies; Ray starts the actor again
            time.sleep(0.02)

        def drained() -> bool:
            backlog = source.backlog()
            return backlog["pending"] == 0 and backlog["lag"] == 0

        wait_until("the stream drained", drained)
        wait_until(
            "the killed process's actor restarted",
            lambda: group.status(config)["consumers"].get(names[1], {}).get("state") == "running",
        )
        report = group.status(config)
        assert sorted(report["consumers"]) == sorted(names[1:])  # the restarted one is back under its name
        assert ray.get(group.handles(config.streaming.group)[names[1]].pid.remote()) != victim_pid
        assert exact_mismatches(store, views, events) == []
        assert source.dead_letters() == []
        claimed = sum(s["claimed"] for s in report["consumers"].values())
        assert claimed > 0  # the killed consumers' entries were taken over, not skipped
    finally:
        group.stop(config)
    assert group.handles(config.streaming.group) == {}
