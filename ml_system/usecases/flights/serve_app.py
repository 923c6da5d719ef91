"""HTTP app of the flight-delay use case: ingress -> online features -> model.

Two topologies from one code path (``FlightScorer``: cached feature lookup,
on-demand features, batched XGBoost, prediction cache):

- ``fused`` (default, fastest): the ingress replica holds the scorer in-process.
  A single-row request costs no extra actor hop, and ``@serve.batch`` still
  gathers concurrent requests of the replica into one feature lookup per view
  and one model call.
- ``split``: a thin ingress calls ``FlightScorerDeployment`` through a handle,
  so the scorer scales and is placed on its own (a fractional GPU), and the
  ``x-session-id`` header reaches its request router: with the
  ``ConsistentHashRouter`` one session always lands on one scorer replica and
  finds its features and predictions in that replica's cache.

Unknown airports, tail numbers or carriers are not errors: the flight is still
scored, the affected features are treated as missing (XGBoost's learned default
branch), and the response lists them under ``missing_features``. Feature
freshness is judged against the flight's scheduled departure: a value older
than the view's TTL at that moment counts as missing.
"""

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ml_system.features import FeatureStatus, FeatureStore
from ml_system.serving import tracing
from ml_system.serving.cache import MISSING, TTLCache
from ml_system.serving.feature_cache import CachingOnlineStore
from ml_system.serving.http import (
    HTTPProblem,
    json_response,
    parse_body,
    problem_response,
    read_body,
)
from ml_system.serving.metrics import record_request, serving_metrics
from ml_system.serving.model_deployment import BatchingConfig, RegisteredBooster, configure_batch, platform_config
from ml_system.usecases.flights.features import ondemand_features, ondemand_row

MAX_BODY_BYTES = 1_000_000
ONDEMAND = ("dep_hour", "weekday", "month")
SESSION_HEADER = "x-session-id"
TRACE_HEADER = "x-trace-id"
SERVED_BY_HEADER = "x-served-by"
RETRY_AFTER_S = 1
# The shipped knobs (also in serve_configs/flight_delay.yaml): batches of up to 64 rows gathered for 2 ms,
# caches bounded by a 1 s TTL (how long a streamed feature may lag) and keyed on model and data version.
DEFAULT_USER_CONFIG: dict[str, Any] = {
    "max_batch_size": 64,
    "batch_wait_timeout_s": 0.002,
    "feature_cache_ttl_s": 1.0,
    "prediction_cache_ttl_s": 1.0,
    "cache_max_entries": 100_000,
}


class Flight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", examples=["UA"])
    flight: int = Field(ge=1, le=9999, examples=[1545])
    tailnum: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,8}$", examples=["N14228"])
    origin: str = Field(pattern=r"^[A-Z]{3}$", examples=["EWR"])
    dest: str = Field(pattern=r"^[A-Z]{3}$", examples=["IAH"])
    sched_dep_time: AwareDatetime = Field(
        description="Scheduled departure with its UTC offset, e.g. 2013-12-31T18:30:00-05:00",
        examples=["2013-12-31T18:30:00-05:00"],
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flights: list[Flight] = Field(min_length=1)


class Prediction(BaseModel):
    carrier: str
    flight: int
    delay_probability: float
    delayed: bool
    missing_features: list[str]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


# What crosses a handle: plain tuples pickle faster than pydantic objects.
FlightRow = tuple[str, int, str | None, str, str, datetime]


def _row(f: Flight) -> FlightRow:
    return (f.carrier, f.flight, f.tailnum, f.origin, f.dest, f.sched_dep_time)


class FlightScorer:
    """Features + model for many flights at once, with the per-replica caches.

    ``user_config`` keys: ``max_batch_size``, ``batch_wait_timeout_s``,
    ``feature_cache_ttl_s``, ``prediction_cache_ttl_s``, ``cache_max_entries``
    (a TTL of 0 turns a cache off).
    """

    def __init__(self, model_name: str, alias: str, home: str | None, device: str = "cpu") -> None:
        self.model = RegisteredBooster(model_name, alias, home, device=device)
        self.batching = BatchingConfig()
        store = FeatureStore(platform_config(home))
        self.reader = store.online_reader(feature_service=self.model.spec.feature_service)
        views = [view.name for view, _ in self.reader.plan]
        self.feature_cache = TTLCache(0, 0)
        self.prediction_cache = TTLCache(0, 0)
        self.online = CachingOnlineStore(self.reader.store, self.feature_cache, views)
        self.reader.store = self.online
        self.view_of = {name: view.name for view, feats in self.reader.plan for name, _ in feats}
        columns = self.model.columns
        self.online_cols = [(j, n) for j, n in enumerate(columns) if n not in ONDEMAND]
        self.ondemand_cols = [(j, ONDEMAND.index(n)) for j, n in enumerate(columns) if n in ONDEMAND]
        self.threshold = float(self.model.spec.threshold)
        self.version = self.model.registered.version
        self._metrics_on = False

    def enable_metrics(self) -> None:
        self._metrics_on = True
        self.model.enable_metrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batching = BatchingConfig.from_user_config(user_config)
        configure_batch(self._score_batch, self.batching)
        entries = int(user_config.get("cache_max_entries", 100_000))
        self.feature_cache.resize(float(user_config.get("feature_cache_ttl_s", 0)), entries)
        self.prediction_cache.resize(float(user_config.get("prediction_cache_ttl_s", 0)), entries)

    def describe(self) -> dict[str, Any]:
        return {
            **self.model.describe(),
            **self.batching.describe(),
            "feature_cache_ttl_s": self.feature_cache.ttl_s,
            "prediction_cache_ttl_s": self.prediction_cache.ttl_s,
            "feature_cache_hit_rate": round(self.feature_cache.hit_rate(), 4),
            "prediction_cache_hit_rate": round(self.prediction_cache.hit_rate(), 4),
            "data_version": self.online.version,
        }

    def assemble(self, rows: list[FlightRow]) -> tuple[np.ndarray, list[list[str]]]:
        entity_rows = [
            {"origin": r[3], "tailnum": r[2] or "", "carrier": r[0], "route": f"{r[3]}-{r[4]}"} for r in rows
        ]
        online = self.reader.read(entity_rows, now=[r[5] for r in rows])
        n = len(rows)
        matrix = np.empty((n, len(self.model.columns)), dtype=np.float32)
        for j, name in self.online_cols:
            matrix[:, j] = [np.nan if v is None else v for v in online.values[name]]
        if n == 1:
            demand = np.asarray([ondemand_row(rows[0][5])], dtype=np.float32)
        else:
            sched = pd.to_datetime(pd.Series([r[5] for r in rows]).map(pd.Timestamp), utc=True)
            demand = ondemand_features(sched)[list(ONDEMAND)].to_numpy(dtype=np.float32)
        for j, k in self.ondemand_cols:
            matrix[:, j] = demand[:, k]
        missing: list[list[str]] = []
        for i in range(n):
            views = {self.view_of[m] for m, st in online.statuses.items() if st[i] is not FeatureStatus.PRESENT}
            missing.append(sorted(views))
        return matrix, missing

    async def score(self, rows: list[FlightRow]) -> tuple[list[float], list[list[str]]]:
        """Probabilities and missing feature views per row, in order.

        Concurrent requests are gathered by ``@serve.batch`` and answered
        together: one data-version probe, one store query per view and one
        model call for all of them. On CPU the feature lookup, not the trees,
        is what batching saves most. A request that is a batch already skips
        the queue.
        """
        parent = tracing.current()
        if self.batching.skips_queue(len(rows)):
            return self.score_now(rows, [parent])
        return await self._score_batch(rows, parent)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(
        self, requests: list[list[FlightRow]], parents: list[Any]
    ) -> list[tuple[list[float], list[list[str]]]]:
        probs, missing = self.score_now([row for rows in requests for row in rows], parents)
        out = []
        start = 0
        for rows in requests:
            out.append((probs[start : start + len(rows)], missing[start : start + len(rows)]))
            start += len(rows)
        return out

    def score_now(self, rows: list[FlightRow], parents: list[Any] | None = None) -> tuple[list[float], list[list[str]]]:
        """Score ``rows`` in this call (what a batch, or a bare process, runs)."""
        pc = self.prediction_cache
        data_version = self.online.refresh(needed=pc.enabled)
        probs: list[float] = [0.0] * len(rows)
        missing: list[list[str]] = [[] for _ in rows]
        todo = list(range(len(rows)))
        keys: list[tuple[Any, ...]] = []
        if pc.enabled:
            keys = [(self.version, data_version, *r) for r in rows]
            todo = []
            for i, key in enumerate(keys):
                hit = pc.get(key)
                if hit is MISSING:
                    todo.append(i)
                else:
                    probs[i], missing[i] = hit
        if todo:
            with tracing.batch_span("features", parents or [], {"rows": len(todo)}):
                fc_before = (self.feature_cache.hits, self.feature_cache.misses)
                matrix, miss = self.assemble([rows[i] for i in todo])
            attributes = {"model_version": self.version, "device": self.model.device, "rows": len(todo)}
            with tracing.batch_span("model", parents or [], attributes):
                scores = self.model.score_now(matrix)
            for i, p, m in zip(todo, scores.tolist(), miss, strict=True):
                probs[i], missing[i] = p, m
                if pc.enabled:
                    pc.put(keys[i], (p, m))
            if self._metrics_on:
                m = serving_metrics()
                m.batch_size.observe(len(todo))
                m.cache_lookups(
                    "features",
                    self.feature_cache.hits - fc_before[0],
                    self.feature_cache.misses - fc_before[1],
                )
                for views in miss:
                    for view in views:
                        m.missing.inc(1, tags={"view": view})
        if self._metrics_on:
            m = serving_metrics()
            m.rows.inc(len(rows), tags={"model_version": self.version})
            if pc.enabled:
                m.cache_lookups("predictions", len(rows) - len(todo), len(todo))
        return probs, missing


def _replica_tag() -> str:
    try:
        return f"{serve.get_replica_context().replica_id.unique_id}/{os.getpid()}"
    except Exception:  # noqa: BLE001 - outside Serve (bare process)
        return f"local/{os.getpid()}"


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
class FlightScorerDeployment:
    """The scorer as its own deployment (split topology)."""

    def __init__(
        self, model_name: str, alias: str, home: str | None, device: str = "cpu", tracing_exporter: str = "none"
    ) -> None:
        tracing.configure(tracing_exporter)
        self.scorer = FlightScorer(model_name, alias, home, device)
        self.scorer.enable_metrics()
        self.tag = _replica_tag()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.scorer.reconfigure(user_config)

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "served_by": self.tag}

    async def score(self, rows: list[FlightRow], trace_carrier: dict[str, str]) -> dict[str, Any]:
        with tracing.request_span("scorer", trace_carrier):
            probs, missing = await self.scorer.score(rows)
        return {
            "probabilities": probs,
            "missing": missing,
            "model_name": self.scorer.model.registered.name,
            "model_version": self.scorer.version,
            "threshold": self.scorer.threshold,
            "served_by": self.tag,
        }


api = FastAPI(
    title="ml_system flight delay",
    description="Probability that a departure from New York is more than 15 minutes late.",
    version="1",
)


_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema(ref_template="#/$defs/{model}")}},
    },
    "responses": {
        "413": {"description": "body or row count past the limit"},
        "422": {"description": "invalid payload; `detail[].loc` names the field"},
        "503": {"description": "overloaded; retry after `Retry-After` seconds"},
    },
}


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    max_queued_requests=512,
    backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
)
@serve.ingress(api)
class FlightDelayAPI:
    def __init__(
        self,
        scorer: DeploymentHandle | None,
        model_name: str = "flight_delay",
        alias: str = "champion",
        home: str | None = None,
        max_rows: int = 1000,
        device: str = "cpu",
        tracing_exporter: str = "none",
    ) -> None:
        tracing.configure(tracing_exporter)
        self.max_rows = max_rows
        self.remote = scorer
        self.local: FlightScorer | None = None
        if scorer is None:
            self.local = FlightScorer(model_name, alias, home, device)
            self.local.enable_metrics()
        self.tag = _replica_tag()
        self._info: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if self.local is not None:
            self.local.reconfigure(user_config)

    async def _describe(self) -> dict[str, Any]:
        if self.local is not None:
            return {**self.local.describe(), "served_by": self.tag}
        if self._info is None:
            async with self._lock:
                if self._info is None:
                    self._info = await self.remote.describe.remote()  # type: ignore[union-attr]
        return self._info

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        info = await self._describe()
        return {"status": "ok", "model_name": info["model_name"], "model_version": info["model_version"]}

    @api.get("/info")
    async def info(self) -> dict[str, Any]:
        """Model, batching and cache settings of the replica that answers (and its pid)."""
        if self.remote is not None:
            info = await self.remote.describe.remote()
        else:
            info = await self._describe()
        return {**info, "ingress": self.tag, "topology": "split" if self.remote is not None else "fused"}

    @api.post("/predict", response_model=PredictResponse, openapi_extra=_PREDICT_DOC)
    async def predict(self, request: Request) -> Response:
        t0 = time.perf_counter()
        with tracing.request_span("predict", request.headers) as span:
            headers = {TRACE_HEADER: tracing.trace_id(span)}
            try:
                response = await self._predict(request, headers)
            except HTTPProblem as problem:
                response = problem_response(problem, headers)
            except BackPressureError:
                response = problem_response(
                    HTTPProblem(503, "the scorer is overloaded; retry later", {"Retry-After": str(RETRY_AFTER_S)}),
                    headers,
                )
            span.set_attribute("http.status_code", response.status_code)
        record_request("/predict", response.status_code, (time.perf_counter() - t0) * 1000)
        return response

    async def _predict(self, request: Request, headers: dict[str, str]) -> Response:
        body = await read_body(request, MAX_BODY_BYTES)
        payload = parse_body(PredictRequest, body)
        flights = payload.flights
        if len(flights) > self.max_rows:
            raise HTTPProblem(
                413,
                [
                    {
                        "loc": ["body", "flights"],
                        "msg": f"flights: {len(flights)} rows; the limit is {self.max_rows} per request",
                        "type": "too_long",
                    }
                ],
            )
        rows = [_row(f) for f in flights]
        if self.local is not None:
            probs, missing = await self.local.score(rows)
            name, version, threshold = self.local.model.registered.name, self.local.version, self.local.threshold
            served_by = self.tag
        else:  # the scorer replica that answered says which model it used: a rollout may be under way
            session = request.headers.get(SESSION_HEADER)
            handle = self.remote.options(session_id=session) if session else self.remote  # type: ignore[union-attr]
            out = await handle.score.remote(rows, tracing.inject())
            probs, missing, served_by = out["probabilities"], out["missing"], out["served_by"]
            name, version, threshold = out["model_name"], out["model_version"], out["threshold"]
        predictions = [
            {
                "carrier": f.carrier,
                "flight": f.flight,
                "delay_probability": p,
                "delayed": p >= threshold,
                "missing_features": m,
            }
            for f, p, m in zip(flights, probs, missing, strict=True)
        ]
        headers[SERVED_BY_HEADER] = served_by
        return json_response(
            {"predictions": predictions, "model_name": name, "model_version": version}, headers=headers
        )


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run``/``serve deploy`` (``args`` from the YAML).

    ``topology``: ``fused`` (default) or ``split``; ``device``: ``cpu`` or
    ``cuda`` (falls back to CPU with a log line); ``tracing_exporter``: see
    ``ml_system.serving.tracing``; ``user_config``: initial scorer knobs when
    not given per deployment in the YAML; ``num_replicas``: of the fused ingress.
    """
    model_name = str(args.get("model_name", "flight_delay"))
    alias = str(args.get("alias", "champion"))
    home = args.get("home")
    device = str(args.get("device", "cpu"))
    exporter = str(args.get("tracing_exporter") or os.environ.get("MLSYS_TRACING_EXPORTER", "none"))
    max_rows = int(args.get("max_rows", 1000))
    user_config = {**DEFAULT_USER_CONFIG, **(args.get("user_config") or {})}
    topology = args.get("topology", "fused")
    if topology == "split":
        scorer = FlightScorerDeployment.options(user_config=user_config)
        handle = scorer.bind(model_name, alias, home, device, exporter)
        return FlightDelayAPI.bind(handle, model_name, alias, home, max_rows, device, exporter)
    if topology != "fused":
        raise ValueError(f"args.topology must be 'fused' or 'split', not {topology!r}")
    ingress = FlightDelayAPI.options(user_config=user_config)
    if "num_replicas" in args:
        ingress = ingress.options(num_replicas=int(args["num_replicas"]))
    return ingress.bind(None, model_name, alias, home, max_rows, device, exporter)


def flights_from_frame(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Request payload rows from raw flights (for the quickstart and the load tests)."""
    out = []
    for row in frame.itertuples(index=False):
        sched: datetime = pd.Timestamp(row.sched_dep_ts).tz_convert("America/New_York").to_pydatetime()
        out.append(
            {
                "carrier": str(row.carrier),
                "flight": int(row.flight),
                "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum),
                "origin": str(row.origin),
                "dest": str(row.dest),
                "sched_dep_time": sched.isoformat(),
            }
        )
    return out
