"""Online features + model for many rows at once, for any use case, with the per-replica caches.

A row to score is the use case's entity row (join keys and on-demand inputs) and the moment the
prediction is for. The scorer reads every stored view of the model's feature service in one
store round trip, computes the on-demand features, orders the columns as the model was trained
and scores them in one XGBoost call. ``@serve.batch`` gathers concurrent requests of a replica
into one such pass: one data-version probe, one store query per view and one model call for all
of them; on CPU the feature lookup, not the trees, is what batching saves most.

One request never fails the others it was batched with: when a batch cannot be scored as a
whole, each request is scored alone, and only the one that fails gets its error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
from ray import serve

from ml_system.cluster import refuse_node_local
from ml_system.errors import (
    EntityDataError,
    MLSystemError,
    ModelIntegrityError,
    StoreError,
    StoreUnavailableError,
    UnscorableError,
)
from ml_system.features import FeatureStatus, FeatureStore, OnlineFeatureReader
from ml_system.features.materialize import watermark_key
from ml_system.serving import tracing
from ml_system.serving.cache import MISSING, TTLCache
from ml_system.serving.feature_cache import CachingOnlineStore
from ml_system.serving.metrics import serving_metrics
from ml_system.serving.model_deployment import RegisteredBooster, configure_batch, platform_config
from ml_system.serving.settings import ScorerSettings
from ml_system.usecase import UseCase, load_usecase

log = logging.getLogger("ml_system.serving")


class ScoreRow(NamedTuple):
    """What crosses a handle per row: plain values pickle faster than the request's pydantic items."""

    entity: dict[str, Any]
    at: datetime


class Scored(NamedTuple):
    scores: list[float]
    missing: list[list[str]]
    version: str
    """The model version that scored these rows (a swap may happen between two requests, never inside one)."""
    threshold: float | None


class Served(NamedTuple):
    """Everything that depends on the model version, swapped as one attribute write.

    A request takes the bundle once and uses it to its end, so requests in flight finish on the
    version they started with while the next ones get the new one.
    """

    model: RegisteredBooster
    reader: OnlineFeatureReader
    online: CachingOnlineStore
    columns: list[str]
    view_of: dict[str, str]
    threshold: float | None

    @property
    def version(self) -> str:
        return self.model.registered.version


class Scorer:
    """The scoring half of a use case's app; ``user_config`` is a ``ScorerSettings``."""

    def __init__(
        self,
        usecase: str,
        model_name: str | None = None,
        alias: str = "champion",
        version: str | None = None,
        home: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = platform_config(home)
        # a replica on another node would open its own empty copy of a node-local store and answer from it
        refuse_node_local("serve", self.config.node_local_locations(("online_store", "registry")))
        self.home = home
        self.device = device
        self.usecase: UseCase = load_usecase(usecase, self.config.usecases, check_all=False)
        self.model_name_wanted = model_name or self.usecase.model_name
        self.alias, self.pinned = alias, version
        self.settings = ScorerSettings()
        # one batch queue per scorer: ``@serve.batch`` on the method would share one queue among the
        # scorers of a replica (champion and challenger during a rollout) and score a mixed batch with
        # the first request's scorer
        self._score_batch = serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)(self._batched)
        self.config_error = ""
        self.feature_cache = TTLCache(0, 0)
        self.prediction_cache = TTLCache(0, 0)
        self.served = self._load(alias, version)
        self._metrics_on = False
        self.unready = self.health()[0]
        """Why this replica must not answer now ("" when it may); refreshed by every health check."""

    def _load(self, alias: str, version: str | None) -> Served:
        """Load a version beside the one serving and check it against its feature service (refused if they differ)."""
        model = RegisteredBooster(self.model_name_wanted, alias, self.home, version, device=self.device)
        reader = FeatureStore(self.config).online_reader(feature_service=model.spec.feature_service)
        columns = list(model.columns)
        given = set(reader.feature_names)
        if set(columns) != given:
            raise ModelIntegrityError(
                f"model '{model.registered.name}' v{model.registered.version} expects columns "
                f"{sorted(set(columns) - given)} that feature service '{model.spec.feature_service}' does not "
                f"give, and ignores {sorted(given - set(columns))}"
            )
        online = CachingOnlineStore(reader.store, self.feature_cache, [view.name for view, _ in reader.plan])
        reader.store = online
        view_of = {name: view.name for view, feats in reader.plan for name, _ in feats}
        assert self.usecase.training is not None
        threshold = model.spec.threshold if self.usecase.training.is_classifier else None
        return Served(model, reader, online, columns, view_of, threshold)

    async def switch(self, alias: str, version: str | None) -> None:
        """Serve another version without a restart, or keep the current one if the new one is refused.

        The new version is downloaded, verified and checked in a thread beside the serving one,
        then swapped in with one attribute write.
        """
        try:
            served = await asyncio.to_thread(self._load, alias, version)
        except MLSystemError as exc:
            self.config_error = f"model {alias if version is None else 'version ' + version} refused: {exc}"
            log.error("%s; still serving version %s", self.config_error, self.version)
            return
        self.served = served
        if self._metrics_on:
            served.model.enable_metrics()
        log.info("now serving %s version %s", self.model_name, self.version)

    @property
    def model(self) -> RegisteredBooster:
        return self.served.model

    @property
    def online(self) -> CachingOnlineStore:
        return self.served.online

    @property
    def version(self) -> str:
        return self.served.version

    @property
    def threshold(self) -> float | None:
        return self.served.threshold

    @property
    def model_name(self) -> str:
        return self.model.registered.name

    def enable_metrics(self) -> None:
        self._metrics_on = True
        self.model.enable_metrics()

    def reconfigure(self, user_config: dict[str, Any]) -> bool:
        """Apply new settings, or refuse them and keep the current ones (logged, and shown by ``/info``).

        Returns whether the settings ask for another model version than the one serving
        (``switch`` loads it; it is async because loading takes a download).
        """
        try:
            settings = ScorerSettings.model_validate(user_config)
        except ValueError as exc:
            self.config_error = f"user_config refused, keeping the previous settings: {exc}".replace("\n", " ")
            log.error("%s", self.config_error)
            return False
        self.settings = settings
        self.config_error = ""
        configure_batch(self._score_batch, settings)
        self.feature_cache.resize(settings.feature_cache_ttl_s, settings.cache_max_entries)
        self.prediction_cache.resize(settings.prediction_cache_ttl_s, settings.cache_max_entries)
        return self.wanted_version() is not None and self.wanted_version() != self.version

    def wanted_version(self) -> str | None:
        return self.settings.model_version or self.pinned

    async def apply(self, user_config: dict[str, Any]) -> None:
        """``reconfigure`` for a replica: settings now, then the model version they pin, if it changed."""
        if self.reconfigure(user_config):
            await self.switch(self.alias, self.wanted_version())

    def health(self) -> tuple[str, bool]:
        """Why this replica must not answer now ("" when it may), and whether restarting it could help.

        An empty or miswired store would answer every row with all features missing, a
        confident-looking default: the replica refuses with 503 until the data lands, and starts
        answering by itself once it does. An unreachable store also fails Serve's health check,
        so the replica is replaced and the router stops sending it traffic.
        """
        try:
            snapshot = self.online.inner.active_snapshot()
            marks = self.online.inner.get_meta_many([watermark_key(v, snapshot) for v in self.online.views])
        except StoreError as exc:
            return f"online store unavailable: {exc}", True
        empty = [view for view, mark in zip(self.online.views, marks, strict=True) if mark is None]
        if empty:
            return f"online store holds nothing for feature views {empty}: materialize them first", False
        return "", False

    def check(self) -> str:
        """Serve's health check: refresh what the request path refuses with; the reason when it is fatal."""
        reason, fatal = self.health()
        self.unready = reason
        return reason if fatal else ""

    def describe(self) -> dict[str, Any]:
        return {
            "usecase": self.usecase.name,
            **self.settings.model_dump(exclude={"model_version"}),
            "pinned_version": self.wanted_version(),
            **self.model.describe(),
            "config_error": self.config_error,
            "feature_cache_hit_rate": round(self.feature_cache.hit_rate(), 4),
            "prediction_cache_hit_rate": round(self.prediction_cache.hit_rate(), 4),
            "data_version": self.online.version,
        }

    def assemble(self, rows: list[ScoreRow], served: Served | None = None) -> tuple[np.ndarray, list[list[str]]]:
        served = served or self.served
        online = served.reader.read([r.entity for r in rows], now=[r.at for r in rows])
        n = len(rows)
        matrix = np.empty((n, len(served.columns)), dtype=np.float32)
        for j, name in enumerate(served.columns):
            matrix[:, j] = [np.nan if v is None else v for v in online.values[name]]
        missing: list[list[str]] = []
        present = FeatureStatus.PRESENT
        view_of = served.view_of
        statuses = [(view_of[m], st) for m, st in online.statuses.items() if m in view_of]
        for i in range(n):
            missing.append(sorted({view for view, st in statuses if st[i] is not present}))
        return matrix, missing

    async def score(self, rows: list[ScoreRow]) -> Scored:
        """Scores and missing feature views per row, in order; a request that is a batch already skips the queue.

        A row that the schema accepts but scoring cannot use raises ``UnscorableError`` naming it.
        """
        if self.unready:
            raise StoreUnavailableError(self.unready)
        parent = tracing.current()
        try:
            if self.settings.skips_queue(len(rows)):
                return self.score_now(rows, [parent])
            result = await self._score_batch(rows, parent)
        except Exception as exc:  # noqa: BLE001 - re-raised; explained when the request caused it
            raise self._explained(rows, exc) from None
        if isinstance(result, Exception):
            raise self._explained(rows, result) from None
        return result

    def _explained(self, rows: list[ScoreRow], exc: Exception) -> Exception:
        """A failure the request's own values caused becomes ``UnscorableError`` naming the row (a 422);
        anything else (a store that broke, corrupt data) stays what it is (a 5xx)."""
        if not isinstance(exc, EntityDataError):
            return exc
        culprit = 0
        if len(rows) > 1:
            for i, row in enumerate(rows):
                try:
                    self.score_now([row])
                except EntityDataError:
                    culprit = i
                    break
        return UnscorableError(culprit, str(exc))

    async def _batched(self, requests: list[list[ScoreRow]], parents: list[Any]) -> list[Scored | Exception]:
        try:
            scored = self.score_now([row for rows in requests for row in rows], parents)
        except Exception:
            if len(requests) == 1:
                raise
            return [self._alone(rows, parent) for rows, parent in zip(requests, parents, strict=True)]
        out: list[Scored | Exception] = []
        start = 0
        for rows in requests:
            end = start + len(rows)
            out.append(scored._replace(scores=scored.scores[start:end], missing=scored.missing[start:end]))
            start = end
        return out

    def _alone(self, rows: list[ScoreRow], parent: Any) -> Scored | Exception:
        try:
            return self.score_now(rows, [parent])
        except Exception as exc:  # noqa: BLE001 - handed back to that request only
            return exc

    def score_now(self, rows: list[ScoreRow], parents: list[Any] | None = None) -> Scored:
        """Score ``rows`` in this call (what a batch, or a bare process, runs)."""
        served = self.served
        version = served.version
        pc = self.prediction_cache
        data_version = served.online.refresh(needed=pc.enabled)
        scores: list[float] = [0.0] * len(rows)
        missing: list[list[str]] = [[] for _ in rows]
        todo = list(range(len(rows)))
        keys: list[tuple[Any, ...]] = []
        if pc.enabled:
            keys = [(version, data_version, r.at, *r.entity.values()) for r in rows]
            todo = []
            for i, key in enumerate(keys):
                hit = pc.get(key)
                if hit is MISSING:
                    todo.append(i)
                else:
                    scores[i], missing[i] = hit
        if todo:
            with tracing.batch_span("features", parents or [], {"rows": len(todo)}):
                fc_before = (self.feature_cache.hits, self.feature_cache.misses)
                matrix, miss = self.assemble([rows[i] for i in todo], served)
            attributes = {"model_version": version, "device": served.model.device, "rows": len(todo)}
            with tracing.batch_span("model", parents or [], attributes):
                predicted = served.model.score_now(matrix)
            for i, p, m in zip(todo, predicted.tolist(), miss, strict=True):
                scores[i], missing[i] = p, m
                if pc.enabled:
                    pc.put(keys[i], (p, m))
            if self._metrics_on:
                self._record(len(todo), miss, fc_before)
        if self._metrics_on:
            m = serving_metrics()
            m.rows.inc(len(rows))
            if pc.enabled:
                m.cache_lookups("predictions", len(rows) - len(todo), len(todo))
        return Scored(scores, missing, version, served.threshold)

    def _record(self, scored: int, miss: list[list[str]], fc_before: tuple[int, int]) -> None:
        m = serving_metrics()
        m.batch_size.observe(scored)
        m.cache_lookups("features", self.feature_cache.hits - fc_before[0], self.feature_cache.misses - fc_before[1])
        for view, n in Counter(view for views in miss for view in views).items():  # one record per view per batch
            m.missing.inc(n, tags={"view": view})


# ``@serve.batch`` reads the signature of the function it wraps on every call (``inspect.signature``,
# about half of its per-request cost); a ``__signature__`` computed once is what ``inspect`` returns
# without walking the function again.
Scorer._batched.__signature__ = inspect.signature(Scorer._batched)  # type: ignore[attr-defined]
