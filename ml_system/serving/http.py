"""HTTP edges shared by serving apps: bounded body reads, 4xx bodies, fast JSON.

The hot path reads the body itself and validates it with pydantic-core's
``model_validate_json`` instead of FastAPI's body parameter: one Rust pass
from bytes to objects instead of JSON -> dict -> model, and a response
serialized by ``pydantic_core.to_json`` instead of ``jsonable_encoder``. Error
bodies keep FastAPI's shape (``{"detail": [{"loc", "msg", "type"}]}``) so
clients see one format.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)


class HTTPProblem(Exception):
    """A client error with its status, raised anywhere below a route and answered as JSON."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(payload), status_code=status, media_type=JSON, headers=headers)


def problem_response(problem: HTTPProblem, headers: dict[str, str] | None = None) -> Response:
    return json_response({"detail": problem.detail}, problem.status, {**problem.headers, **(headers or {})})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes whether or not a Content-Length was sent.

    Chunked uploads carry no length, so the count is kept while streaming and
    the read stops at the first chunk past the limit.
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPProblem(400, f"header 'content-length' is not a number: {length!r}")
        if int(length) > limit:
            raise HTTPProblem(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def validation_detail(exc: ValidationError, prefix: str = "body") -> list[dict[str, Any]]:
    """pydantic errors as FastAPI shows them, without the offending input (it may be NaN or huge)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = [prefix, *(_clean(p) for p in err["loc"])]
        field = ".".join(str(p) for p in loc[1:]) or prefix
        out.append({"loc": loc, "msg": f"{field}: {err['msg']}", "type": err["type"]})
    return out


def parse_body(model: type[M], body: bytes) -> M:
    """Validate JSON bytes into ``model``; every failure is a 422 naming the field."""
    if not body:
        raise HTTPProblem(422, [{"loc": ["body"], "msg": "body: a JSON object is required", "type": "missing"}])
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPProblem(422, validation_detail(exc)) from None
