"""The HTTP ingress of every use case's app, and the scorer as its own deployment.

Two topologies from one code path (``Scorer``):

- ``fused`` (default, fastest): the ingress replica holds the scorer in-process. A single-row
  request costs no extra actor hop, and ``@serve.batch`` still gathers concurrent requests of
  the replica into one feature lookup per view and one model call.
- ``split``: a thin ingress calls ``ScorerDeployment`` through a handle, so the scorer scales
  and is placed on its own (a fractional GPU), and the ``x-session-id`` header reaches its
  request router: with the ``ConsistentHashRouter`` one session always lands on one scorer
  replica and finds its features and predictions in that replica's cache.

The FastAPI app is built per replica (``__serve_build_asgi_app__``) from the use case's request
and response schema, so one ingress class serves every use case. The hot path reads the body
itself and validates it with pydantic-core; every answer, errors and 500s included, is JSON
with ``x-trace-id`` and is counted in the request metric by status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ml_system.errors import StoreUnavailableError, UnscorableError
from ml_system.serving import profiling, tracing
from ml_system.serving.api_keys import ApiKeys, proxy_host
from ml_system.serving.fast_path import PredictFastPath
from ml_system.serving.http import HTTPProblem, json_response, parse_body, problem_response, read_body
from ml_system.serving.metrics import record_request, serving_metrics
from ml_system.serving.model_deployment import platform_config
from ml_system.serving.openapi import api_for
from ml_system.serving.push_api import PushRoute
from ml_system.serving.router import Router
from ml_system.serving.scorer import Scored, ScoreRow
from ml_system.serving.settings import (
    ARM_HEADER,
    MAX_BODY_BYTES,
    RETRY_AFTER_S,
    SCORER_TIMEOUT_S,
    SERVED_BY_HEADER,
    SESSION_HEADER,
    TRACE_HEADER,
)
from ml_system.usecase import UseCase, load_usecase

log = logging.getLogger("ml_system.serving")


def _replica_tag() -> str:
    try:
        return f"{serve.get_replica_context().replica_id.unique_id}/{os.getpid()}"
    except Exception:  # noqa: BLE001 - outside Serve (bare process)
        return f"local/{os.getpid()}"


def _app_name(default: str) -> str:
    try:
        return serve.get_replica_context().app_name
    except Exception:  # noqa: BLE001 - outside Serve
        return default


def unavailable(reason: str) -> HTTPProblem:
    return HTTPProblem(503, reason, {"Retry-After": str(RETRY_AFTER_S)})


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256, health_check_period_s=2, health_check_timeout_s=10
)
class ScorerDeployment:
    """The scorer as its own deployment (split topology)."""

    def __init__(self, scorer_args: dict[str, Any], tracing_exporter: str = "none") -> None:
        tracing.configure(tracing_exporter)
        self.scorer = Router(scorer_args)
        serving_metrics().for_app(_app_name(self.scorer.usecase.model_name))
        self.scorer.enable_metrics()
        self.tag = _replica_tag()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.scorer.apply(user_config)

    def check_health(self) -> None:
        reason = self.scorer.check()
        if reason:
            raise RuntimeError(reason)

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "served_by": self.tag}

    async def score(self, rows: list[ScoreRow], trace_carrier: dict[str, str]) -> dict[str, Any]:
        with tracing.request_span("scorer", trace_carrier):
            scored, _ = await self.scorer.score(rows, None, trace_carrier.get("traceparent", ""))
        return {"scored": scored, "model_name": self.scorer.model_name, "served_by": self.tag}


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=256,
    max_queued_requests=512,
    backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    health_check_period_s=2,
    health_check_timeout_s=10,
)
@serve.ingress()
class Ingress:
    """``POST /predict``, ``POST /push``, ``GET /healthz`` and ``GET /info`` for one use case."""

    def __init__(self, scorer: DeploymentHandle | None, args: dict[str, Any]) -> None:
        profiling.start_if_asked()
        tracing.configure(args.get("tracing_exporter", "none"))
        scorer_args = args["scorer"]
        self.usecase: UseCase = load_usecase(scorer_args["usecase"], check_all=False)
        assert self.usecase.serving is not None
        self.spec = self.usecase.serving
        self.max_rows = int(args["max_rows"])
        self.timeout_s = float(args.get("scorer_timeout_s", SCORER_TIMEOUT_S))
        self.remote = scorer
        self.local: Router | None = None
        serving_metrics().for_app(_app_name(self.usecase.model_name))
        if scorer is None:
            self.local = Router(scorer_args)
            self.local.enable_metrics()
        config = platform_config(scorer_args.get("home"))
        self.keys = ApiKeys(config, args.get("api_keys", "auto"), proxy_host(config.serving.host))
        self.pushes = PushRoute(config)
        self.api, self.request_model = api_for(self.usecase, self)
        self.tag = _replica_tag()
        self._info: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    def __serve_build_asgi_app__(self) -> PredictFastPath:
        return PredictFastPath(self.api, self.predict)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.keys.load()
        if self.local is not None:
            await self.local.apply(user_config)

    def check_health(self) -> None:
        """Serve's liveness probe: a replica whose store is unreachable is replaced (an empty one answers 503)."""
        if self.local is not None:
            reason = self.local.check()
            if reason:
                raise RuntimeError(reason)

    async def describe(self) -> dict[str, Any]:
        if self.local is not None:
            return {**self.local.describe(), "served_by": self.tag}
        if self._info is None:
            async with self._lock:
                if self._info is None:
                    self._info = await self._call(self.remote.describe)  # type: ignore[union-attr]
        return self._info

    async def healthz(self) -> Response:
        t0 = time.perf_counter()
        reason = self.local.unready if self.local is not None else ""
        if reason:
            response = problem_response(unavailable(reason))
        else:
            info = await self.describe()
            response = json_response(
                {"status": "ok", "model_name": info["model_name"], "model_version": info["model_version"]}
            )
        record_request("/healthz", response.status_code, (time.perf_counter() - t0) * 1000)
        return response

    async def info(self, request: Request) -> Response:
        """Model, batching and cache settings of the replica that answers (and its pid); a team key is needed
        wherever the platform has team tokens."""

        async def answer(headers: dict[str, str]) -> Response:
            if self.keys.any_known:
                self.keys.caller(request.headers)
            info = await self._call(self.remote.describe) if self.remote is not None else await self.describe()  # type: ignore[union-attr]
            topology = "split" if self.remote is not None else "fused"
            return json_response({**info, "ingress": self.tag, "topology": topology}, headers=headers)

        return await self._answered("/info", request, answer)

    async def push(self, request: Request) -> Response:
        """Rows for a feature view, from the team that owns it (``push_api``)."""

        async def answer(headers: dict[str, str]) -> Response:
            caller = self.keys.caller(request.headers)
            body = await read_body(request, MAX_BODY_BYTES)
            return json_response(await self.pushes.push(caller, body), headers=headers)

        return await self._answered("/push", request, answer)

    async def _answered(self, route: str, request: Request, answer: Any) -> Response:
        """``answer`` under a trace span, its problems as JSON with ``x-trace-id``, counted in the request metric."""
        t0 = time.perf_counter()
        with tracing.request_span(route.strip("/"), request.headers) as span:
            headers = {TRACE_HEADER: tracing.trace_id(span)}
            try:
                response = await answer(headers)
            except HTTPProblem as problem:
                response = problem_response(problem, headers)
            except StoreUnavailableError as exc:
                response = problem_response(unavailable(f"online store unavailable: {exc}"), headers)
            except Exception as exc:
                log.exception("%s failed (trace %s)", route, headers[TRACE_HEADER])
                response = problem_response(HTTPProblem(500, f"internal error: {type(exc).__name__}"), headers)
            span.set_attribute("http.status_code", response.status_code)
        record_request(route, response.status_code, (time.perf_counter() - t0) * 1000)
        return response

    async def predict(self, request: Request) -> Response:
        t0 = time.perf_counter()
        with tracing.request_span("predict", request.headers) as span:
            headers = {TRACE_HEADER: tracing.trace_id(span)}
            try:
                if self.keys.predict_needs_key:
                    self.keys.caller(request.headers)
                response = await self._predict(request, headers)
            except HTTPProblem as problem:
                response = problem_response(problem, headers)
            except BackPressureError:
                response = problem_response(unavailable("the scorer is overloaded; retry later"), headers)
            except StoreUnavailableError as exc:
                response = problem_response(unavailable(f"online store unavailable: {exc}"), headers)
            except UnscorableError as exc:
                response = problem_response(self._unscorable(exc), headers)
            except Exception as exc:
                log.exception("predict failed (trace %s)", headers[TRACE_HEADER])
                response = problem_response(HTTPProblem(500, f"internal error: {type(exc).__name__}"), headers)
            span.set_attribute("http.status_code", response.status_code)
        record_request("/predict", response.status_code, (time.perf_counter() - t0) * 1000)
        return response

    async def _predict(self, request: Request, headers: dict[str, str]) -> Response:
        body = await read_body(request, MAX_BODY_BYTES)
        payload = parse_body(self.request_model, body)
        field = self.spec.items_field
        items = getattr(payload, field)
        if len(items) > self.max_rows:
            msg = f"{field}: {len(items)} rows; the limit is {self.max_rows} per request"
            raise HTTPProblem(413, [{"loc": ["body", field], "msg": msg, "type": "too_long"}])
        rows = [ScoreRow(self.spec.entity_row(item), self.spec.event_time(item)) for item in items]
        if self.local is not None:
            session = request.headers.get(SESSION_HEADER)
            scored, headers[ARM_HEADER] = await self.local.score(rows, session, headers[TRACE_HEADER])
            name, served_by = self.local.model_name, self.tag
        else:  # the scorer replica that answered says which model it used: a rollout may be under way
            session = request.headers.get(SESSION_HEADER)
            handle = self.remote.options(session_id=session) if session else self.remote  # type: ignore[union-attr]
            out = await self._call(handle.score, rows, tracing.inject())
            scored, name, served_by = Scored(*out["scored"]), out["model_name"], out["served_by"]
        version, threshold = scored.version, scored.threshold
        predictions = []
        for item, score, missing in zip(items, scored.scores, scored.missing, strict=True):
            answer = self.spec.respond(item, score, None if threshold is None else score >= threshold)
            answer["missing_features"] = missing
            predictions.append(answer)
        headers[SERVED_BY_HEADER] = served_by
        return json_response(
            {"predictions": predictions, "model_name": name, "model_version": version}, headers=headers
        )

    async def _call(self, method: Any, *args: Any) -> Any:
        """A call to the scorer deployment, bounded: past the deadline the caller gets 503, not a hang."""
        response = method.remote(*args)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except TimeoutError:
            response.cancel()
            raise unavailable(f"the scorer did not answer within {self.timeout_s} s") from None

    def _unscorable(self, exc: UnscorableError) -> HTTPProblem:
        field = self.spec.items_field
        msg = f"{field}.{exc.index}: cannot be scored: {exc.reason}"
        return HTTPProblem(422, [{"loc": ["body", field, exc.index], "msg": msg, "type": "value_error"}])
