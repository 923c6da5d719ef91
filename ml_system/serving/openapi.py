"""A use case's FastAPI app: its routes, and an OpenAPI document whose every ``$ref`` resolves.

``/predict`` reads the raw body (pydantic-core validates the bytes in one pass), so FastAPI
cannot derive the body schema from the handler's signature. The request model's JSON schema is
put into ``components/schemas`` with refs pointing there; nested models (``$defs``) go beside
it, so client generators and schema fuzzers can read the whole body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from ml_system.usecase import UseCase

REF = "#/components/schemas/{model}"


def request_model(usecase: UseCase) -> type[BaseModel]:
    """``{items_field: [item, ...]}`` with at least one item, nothing else."""
    assert usecase.serving is not None
    spec = usecase.serving
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        **{spec.items_field: (list[spec.request_item], Field(min_length=1))},  # type: ignore[valid-type]
    )


def response_model(usecase: UseCase) -> type[BaseModel]:
    assert usecase.serving is not None
    item = create_model(
        usecase.serving.response_item.__name__,
        __base__=usecase.serving.response_item,
        missing_features=(list[str], Field(description="Feature views missing or older than their TTL")),
    )
    return create_model(
        "PredictResponse", predictions=(list[item], ...), model_name=(str, ...), model_version=(str, ...)
    )  # type: ignore[valid-type]


def _with_body(api: FastAPI, body: type[BaseModel], path: str) -> None:
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = generate()
        doc = body.model_json_schema(ref_template=REF)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(doc.pop("$defs", {}))
        components[body.__name__] = doc
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body.__name__)}}},
        }
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


def api_for(usecase: UseCase, ingress: Any) -> tuple[FastAPI, type[BaseModel]]:
    """The routes of ``ingress`` for ``usecase``; returns the app and its request model."""
    assert usecase.serving is not None
    spec = usecase.serving
    body = request_model(usecase)
    api = FastAPI(title=spec.title or usecase.name, description=spec.description, version="1")
    responses: dict[int | str, dict[str, Any]] = {
        413: {"description": "body or row count past the limit"},
        422: {"description": "invalid payload; `detail[].loc` names the field"},
        503: {"description": "overloaded or the online store is unavailable; retry after `Retry-After` seconds"},
    }

    @api.post("/predict", response_model=response_model(usecase), responses=responses)
    async def predict(request: Request) -> Response:
        return await ingress.predict(request)

    @api.get("/healthz")
    async def healthz() -> Response:
        return await ingress.healthz()

    keyed: dict[int | str, dict[str, Any]] = {
        401: {"description": "no team token, or not a valid one (`Authorization: Bearer <token>` or `x-api-key`)"}
    }

    @api.get("/info", responses=keyed)
    async def info(request: Request) -> Response:
        """Model, batching and cache settings of the replica that answers (and its pid)."""
        return await ingress.info(request)

    @api.post(
        "/push",
        responses={
            **keyed,
            403: {"description": "the view belongs to another team"},
            404: {"description": "no such feature view"},
            409: {"description": "the view is retired"},
            422: {"description": "a row or field does not match the view's schema; `detail[].loc` names it"},
        },
    )
    async def push(request: Request) -> Response:
        """Rows for a feature view (`{"view", "rows", "to"}`), from the team that owns it."""
        return await ingress.push(request)

    _with_body(api, body, "/predict")
    return api, body
