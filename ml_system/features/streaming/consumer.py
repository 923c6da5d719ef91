"""The ingestion loop of one consumer: read, decode, apply to the window state, write online, ack.

At-least-once with idempotent effects: an entry is acked only after its rows are written (or it is
parked on the dead letter), so a consumer that dies anywhere leaves its entries pending for another
to claim; replaying them changes nothing, because the window state counts an event id once and a
stale write loses to a newer one in the online store (``state.py``). Whatever fails on the way
(broker, state or online store away) is retried with capped exponential backoff, on the same
batch, and shown in ``status``; the loop never exits on a bad event or a lost connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ml_system.config_streaming import StreamingConfig
from ml_system.errors import StoreUnavailableError
from ml_system.features import snapshots
from ml_system.features.online.base import OnlineStore
from ml_system.features.streaming.decode import DecodedEvent, EventDecoder, EventError
from ml_system.features.streaming.sources import StreamMessage, StreamSource
from ml_system.features.streaming.state import DUPLICATE, LATE, EntityState, Item, ViewParams, WindowState
from ml_system.features.streaming.views import StreamFeatureView

log = logging.getLogger(__name__)

_RETRYABLE = (StoreUnavailableError, ConnectionError, TimeoutError)
FRESHNESS_SAMPLES = 200_000


@dataclass
class ConsumerStatus:
    consumer: str
    state: str = "starting"
    """starting, running, retrying (a dependency is away), stopped."""
    batches: int = 0
    events: int = 0
    """Entries whose rows were written and acked (duplicates included)."""
    duplicates: int = 0
    dead_lettered: int = 0
    late: int = 0
    claimed: int = 0
    retries: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    down_since: float = 0.0
    rows_written: int = 0


class StreamIngestor:
    """One consumer of the group; ``run`` loops until ``stop``; ``step`` does one batch (tests drive it)."""

    def __init__(
        self,
        name: str,
        config: StreamingConfig,
        views: list[StreamFeatureView],
        source: StreamSource,
        state: WindowState,
        online: OnlineStore,
        clock: Callable[[], int] = time.time_ns,
        max_future_skew_s: float = 300.0,
    ) -> None:
        self.name = name
        self.config = config
        self.views = views
        self.source = source
        self.state = state
        self.online = online
        self.clock = clock
        self.max_future_skew_ns = int(max_future_skew_s * 1e9)
        self.decoder = EventDecoder(views)
        self.params = [ViewParams.of(state.head(v.name), v) for v in views]
        self.status = ConsumerStatus(name)
        self.freshness_ns: deque[int] = deque(maxlen=FRESHNESS_SAMPLES)
        self._stop = threading.Event()
        self._last_claim = 0.0
        self._group_ready = False

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        delay = self.config.retry_initial_s
        while not self._stop.is_set():
            try:
                self.step()
                delay = self.config.retry_initial_s
            except _RETRYABLE as exc:
                self._failed(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.retry_max_s)
        self.status.state = "stopped"

    def stop(self) -> None:
        self._stop.set()

    def _failed(self, exc: BaseException) -> None:
        now = time.time()
        if self.status.state != "retrying":
            self.status.down_since = now
            log.warning("stream consumer %s: %s; retrying with backoff", self.name, exc)
        self.status.state = "retrying"
        self.status.retries += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.status.last_error_at = now

    def step(self) -> int:
        """Handle one batch (claimed entries first, when due); returns how many entries it handled."""
        if not self._group_ready:
            self.source.ensure_group()
            self._group_ready = True
        messages: list[StreamMessage] = []
        now = time.monotonic()
        if now - self._last_claim >= self.config.claim_every_s:
            messages = self.source.claim_pending(self.name, self.config.claim_idle_ms, self.config.batch_size)
            self.status.claimed += len(messages)
            self._last_claim = now
        if not messages:
            messages = self.source.read(self.name, self.config.batch_size, self.config.block_ms)
        if messages:
            self.handle(messages)
        if self.status.state != "running":
            self.status.state = "running"
            self.status.down_since = 0.0
        return len(messages)

    # ---- one batch -------------------------------------------------------------------------
    def handle(self, messages: list[StreamMessage]) -> None:
        """Decode, apply, write, then ack; raises (for the loop to retry) before acking anything unwritten."""
        refused: list[tuple[StreamMessage, str]] = []
        decoded: list[tuple[StreamMessage, DecodedEvent]] = []
        limit = self.clock() + self.max_future_skew_ns
        for message in messages:
            if message.deliveries > self.config.max_deliveries:
                refused.append((message, f"delivered {message.deliveries} times without being written"))
                continue
            try:
                event = self.decoder.decode(message.fields)
            except EventError as exc:
                refused.append((message, f"malformed: {exc}"))
                continue
            if event.ts > limit:  # it would win every later update of its entities
                refused.append((message, f"future: {self.decoder.ts_field} is past now + features.max_future_skew_s"))
                continue
            decoded.append((message, event))
        items: list[Item] = []
        owners: list[int] = []
        views = range(len(self.views))
        for n, (_, event) in enumerate(decoded):
            ts_us = event.ts // 1000
            for v in views:
                items.append(Item(v, event.keys[v], event.event_id, ts_us, event.values[v]))
                owners.append(n)
        statuses, states = self.state.apply(self.params, items)
        late_of: dict[int, str] = {}
        duplicates = set()
        for item, owner, status in zip(items, owners, statuses, strict=True):
            if status == LATE and owner not in late_of:
                view = self.views[item.view]
                late_of[owner] = (
                    f"late: {self.decoder.ts_field} is more than {view.allowed_lateness} behind the newest event "
                    f"of {view.name} entity '{item.key}' (allowed_lateness)"
                )
            elif status == DUPLICATE:
                duplicates.add(owner)
        self._write(states)
        written_at = self.clock()
        for n, (message, event) in enumerate(decoded):
            if n in late_of:
                refused.append((message, late_of[n]))
            elif n not in duplicates:
                self.freshness_ns.append(written_at - event.ts)
        self.source.dead_letter(refused, self.name)
        acked = [m.id for n, (m, _) in enumerate(decoded) if n not in late_of]
        self.source.ack(acked)
        self.status.batches += 1
        self.status.events += len(acked)
        self.status.duplicates += len(duplicates - set(late_of))
        self.status.dead_lettered += len(refused)
        self.status.late += len(late_of)

    def _write(self, states: list[EntityState]) -> None:
        """Each touched entity's values at its newest event, into every namespace a reader may switch to."""
        rows: dict[str, list[tuple[str, int, int, list[Any]]]] = {}
        for entity in states:
            rows.setdefault(self.views[entity.view].name, []).append(
                (entity.key, entity.newest, entity.stamp, entity.values)
            )
        if not rows:
            return
        targets = snapshots.write_targets(self.online)
        for view in self.views:
            batch = rows.get(view.name)
            if batch:
                for namespace in targets:
                    self.online.write_batch(view.name, batch, namespace, fields=view.feature_names)
                self.status.rows_written += len(batch)

    def snapshot_status(self) -> dict[str, Any]:
        return asdict(self.status)
