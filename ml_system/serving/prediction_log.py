"""The prediction log: every answer a replica gives, appended to a Delta table in batches, off the request path.

A request adds its rows to a bounded in-replica buffer (a list append; no I/O, no lock held across
an ``await``) and goes on. A background task of the replica flushes the buffer every
``flush_interval_s``, or sooner once ``flush_rows`` wait, as one Delta commit of the offline store
(``rollout.prediction_log.table``, default ``prediction_log``), written in a thread so the event
loop keeps answering. A full buffer drops new rows rather than wait: the drop is counted (in
``ml_system_prediction_log_dropped`` and ``describe()``), never blocks. A failed write is counted
the same way and its rows are not retried: the log is evidence for analysis, not a ledger.

One row per scored row: ``request_id``, ``logged_at``, ``event_timestamp`` (the moment predicted
for), ``model_name``, ``model_version``, ``arm`` (``champion``, ``challenger`` or ``shadow``),
``entity`` (the row's keys as JSON), ``input_sha256`` (of the entity row and its time),
``prediction``, ``status`` (``ok`` or ``error``) and ``latency_ms`` of the request. The drift
triggers and the rollout analysis read it by table name. Redis Streams were the alternative sink;
Delta won because the analysis needs days of rows next to the labels, in the store that already
holds them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pandas as pd

from ml_system.config_rollout import PredictionLogConfig
from ml_system.features.offline_store import OfflineStore

log = logging.getLogger("ml_system.serving")

COLUMNS = (
    "request_id", "logged_at", "event_timestamp", "model_name", "model_version", "arm", "entity",
    "input_sha256", "prediction", "status", "latency_ms",
)  # fmt: skip


class LoggedPrediction(NamedTuple):
    request_id: str
    logged_at: datetime
    event_timestamp: datetime
    model_name: str
    model_version: str
    arm: str
    entity: str
    input_sha256: str
    prediction: float
    status: str
    latency_ms: float


DIGEST_MEMO_ENTRIES = 50_000
"""Digests a replica remembers: clients ask about the same entities again and again (a flight's
delay until it departs), and the canonical JSON and SHA-256 of a row cost more than the rest of
its log entry."""


def input_digest(entity: dict[str, Any], at: datetime) -> tuple[str, str]:
    """The entity as canonical JSON, and the SHA-256 of it with the moment it is scored for."""
    text = json.dumps(entity, sort_keys=True, default=str)
    return text, hashlib.sha256(f"{text}|{at.isoformat()}".encode()).hexdigest()


class DigestMemo:
    """``input_digest`` with the answers for recently seen rows kept (bounded; emptied when full)."""

    def __init__(self, entries: int = DIGEST_MEMO_ENTRIES) -> None:
        self.entries = entries
        self.known: dict[tuple[Any, ...], tuple[str, str]] = {}

    def __call__(self, entity: dict[str, Any], at: datetime) -> tuple[str, str]:
        try:
            key = (*entity.items(), at)
            found = self.known.get(key)
        except TypeError:  # an unhashable value (a list): computed every time
            return input_digest(entity, at)
        if found is None:
            if len(self.known) >= self.entries:
                self.known.clear()
            found = self.known[key] = input_digest(entity, at)
        return found


class _Dropped:
    """``ray.util.metrics`` counter, created on first use (it needs a Ray worker)."""

    def __init__(self) -> None:
        self.counter: Any = None

    def inc(self, n: int, reason: str) -> None:
        try:
            if self.counter is None:
                from ray.util import metrics

                self.counter = metrics.Counter(
                    "ml_system_prediction_log_dropped",
                    "Prediction log rows dropped (buffer full or write failed)",
                    tag_keys=("reason",),
                )
            self.counter.inc(n, tags={"reason": reason})
        except Exception:  # noqa: BLE001 - outside Ray the count in describe() is what remains
            pass


class PredictionLog:
    def __init__(self, offline: OfflineStore | None, settings: PredictionLogConfig) -> None:
        self.offline = offline
        self.settings = settings
        self.buffer: list[LoggedPrediction] = []
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.flushes = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._metric = _Dropped()
        self.digest = DigestMemo()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.offline is not None

    def add(self, rows: list[LoggedPrediction]) -> None:
        """Buffer ``rows`` without waiting; what does not fit is counted as dropped."""
        if not self.enabled:
            return
        self.start()
        room = self.settings.buffer_rows - len(self.buffer)
        if room < len(rows):
            lost = len(rows) - max(room, 0)
            self.dropped += lost
            self._metric.inc(lost, "buffer_full")
            rows = rows[: max(room, 0)]
        self.buffer.extend(rows)
        if len(self.buffer) >= self.settings.flush_rows and self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what is buffered now as one commit; returns the rows written."""
        if not self.buffer or self.offline is None:
            return 0
        rows, self.buffer = self.buffer, []
        try:
            await asyncio.to_thread(self._write, rows)
        except Exception as exc:  # noqa: BLE001 - the log must never take the replica down
            self.failed += len(rows)
            self._metric.inc(len(rows), "write_failed")
            log.warning("prediction log: %d rows not written: %s", len(rows), exc)
            return 0
        self.written += len(rows)
        self.flushes += 1
        return len(rows)

    def _write(self, rows: list[LoggedPrediction]) -> None:
        """The frame is built here too, in the writing thread: built on the event loop, a few
        thousand rows held up every request of the replica for milliseconds."""
        assert self.offline is not None
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        for column in ("logged_at", "event_timestamp"):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
        self.offline.write_pandas(self.settings.table, frame, "append")

    def describe(self) -> dict[str, Any]:
        return {
            "prediction_log": {
                "enabled": self.enabled,
                "table": self.settings.table,
                "buffered": len(self.buffer),
                "written": self.written,
                "dropped": self.dropped,
                "write_failed": self.failed,
                "flushes": self.flushes,
            }
        }


def now() -> datetime:
    return datetime.now(UTC)
