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

import logging
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
from ray import serve

from ml_system.errors import MLSystemError, ModelIntegrityError, StoreError
from ml_system.features import FeatureStatus, FeatureStore
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
        config = platform_config(home)
        self.usecase: UseCase = load_usecase(usecase, config.usecases, check_all=False)
        self.model = RegisteredBooster(model_name or self.usecase.model_name, alias, home, version, device=device)
        store = FeatureStore(config)
        self.reader = store.online_reader(feature_service=self.model.spec.feature_service)
        self.columns = self._check_columns()
        views = [view.name for view, _ in self.reader.plan]
        self.settings = ScorerSettings()
        self.config_error = ""
        self.feature_cache = TTLCache(0, 0)
        self.prediction_cache = TTLCache(0, 0)
        self.online = CachingOnlineStore(self.reader.store, self.feature_cache, views)
        self.reader.store = self.online
        self.view_of = {name: view.name for view, feats in self.reader.plan for name, _ in feats}
        assert self.usecase.training is not None
        self.threshold = self.model.spec.threshold if self.usecase.training.is_classifier else None
        self.version = self.model.registered.version
        self._metrics_on = False

    def _check_columns(self) -> list[str]:
        """The model's columns must be exactly what its feature service gives, or it is refused."""
        columns = list(self.model.columns)
        given = set(self.reader.feature_names)
        if set(columns) != given:
            raise ModelIntegrityError(
                f"model '{self.model.registered.name}' v{self.model.registered.version} expects columns "
                f"{sorted(set(columns) - given)} that feature service '{self.model.spec.feature_service}' does not "
                f"give, and ignores {sorted(given - set(columns))}"
            )
        return columns

    @property
    def model_name(self) -> str:
        return self.model.registered.name

    def enable_metrics(self) -> None:
        self._metrics_on = True
        self.model.enable_metrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new settings, or refuse them and keep the current ones (logged, and shown by ``/info``)."""
        try:
            settings = ScorerSettings.model_validate(user_config)
        except ValueError as exc:
            self.config_error = f"user_config refused, keeping the previous settings: {exc}".replace("\n", " ")
            log.error("%s", self.config_error)
            return
        self.settings = settings
        self.config_error = ""
        configure_batch(self._score_batch, settings)
        self.feature_cache.resize(settings.feature_cache_ttl_s, settings.cache_max_entries)
        self.prediction_cache.resize(settings.prediction_cache_ttl_s, settings.cache_max_entries)

    def health(self) -> str:
        """Empty when this replica may take traffic, else why not (the store is unreachable or empty).

        An empty or miswired store would answer every row with all features missing, a
        confident-looking default; refusing traffic is the honest answer.
        """
        try:
            snapshot = self.online.inner.active_snapshot()
            marks = self.online.inner.get_meta_many([watermark_key(v, snapshot) for v in self.online.views])
        except StoreError as exc:
            return f"online store unavailable: {exc}"
        empty = [view for view, mark in zip(self.online.views, marks, strict=True) if mark is None]
        if empty:
            return f"online store holds nothing for feature views {empty}: materialize them first"
        return ""

    def describe(self) -> dict[str, Any]:
        return {
            "usecase": self.usecase.name,
            **self.model.describe(),
            **self.settings.model_dump(),
            "config_error": self.config_error,
            "feature_cache_hit_rate": round(self.feature_cache.hit_rate(), 4),
            "prediction_cache_hit_rate": round(self.prediction_cache.hit_rate(), 4),
            "data_version": self.online.version,
        }

    def assemble(self, rows: list[ScoreRow]) -> tuple[np.ndarray, list[list[str]]]:
        online = self.reader.read([r.entity for r in rows], now=[r.at for r in rows])
        n = len(rows)
        matrix = np.empty((n, len(self.columns)), dtype=np.float32)
        for j, name in enumerate(self.columns):
            matrix[:, j] = [np.nan if v is None else v for v in online.values[name]]
        missing: list[list[str]] = []
        present = FeatureStatus.PRESENT
        statuses = [(self.view_of[m], st) for m, st in online.statuses.items() if m in self.view_of]
        for i in range(n):
            missing.append(sorted({view for view, st in statuses if st[i] is not present}))
        return matrix, missing

    async def score(self, rows: list[ScoreRow]) -> Scored:
        """Scores and missing feature views per row, in order; a request that is a batch already skips the queue."""
        parent = tracing.current()
        if self.settings.skips_queue(len(rows)):
            return self.score_now(rows, [parent])
        result = await self._score_batch(rows, parent)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(self, requests: list[list[ScoreRow]], parents: list[Any]) -> list[Scored | Exception]:
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
            out.append(Scored(scored.scores[start:end], scored.missing[start:end]))
            start = end
        return out

    def _alone(self, rows: list[ScoreRow], parent: Any) -> Scored | Exception:
        try:
            return self.score_now(rows, [parent])
        except Exception as exc:  # noqa: BLE001 - handed back to that request only
            return exc

    def score_now(self, rows: list[ScoreRow], parents: list[Any] | None = None) -> Scored:
        """Score ``rows`` in this call (what a batch, or a bare process, runs)."""
        pc = self.prediction_cache
        data_version = self.online.refresh(needed=pc.enabled)
        scores: list[float] = [0.0] * len(rows)
        missing: list[list[str]] = [[] for _ in rows]
        todo = list(range(len(rows)))
        keys: list[tuple[Any, ...]] = []
        if pc.enabled:
            keys = [(self.version, data_version, r.at, *r.entity.values()) for r in rows]
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
                matrix, miss = self.assemble([rows[i] for i in todo])
            attributes = {"model_version": self.version, "device": self.model.device, "rows": len(todo)}
            with tracing.batch_span("model", parents or [], attributes):
                predicted = self.model.score_now(matrix)
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
        return Scored(scores, missing)

    def _record(self, scored: int, miss: list[list[str]], fc_before: tuple[int, int]) -> None:
        m = serving_metrics()
        m.batch_size.observe(scored)
        m.cache_lookups("features", self.feature_cache.hits - fc_before[0], self.feature_cache.misses - fc_before[1])
        for views in miss:
            for view in views:
                m.missing.inc(1, tags={"view": view})


def is_client_error(exc: Exception) -> bool:
    """Scoring failures caused by what a request holds (a value the schema allows but no clock can place)."""
    return isinstance(exc, (OverflowError, ValueError)) and not isinstance(exc, MLSystemError)
