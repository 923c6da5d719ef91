"""``POST /predict`` straight to the handler, around the FastAPI app that serves everything else.

A replica profiled under load (``MLSYS_SERVE_PROFILE_DIR``, docs/serving.md) spent about half
of its per-request time in FastAPI and Starlette before and after our handler: six middlewares,
matching the path against every route, solving the endpoint's dependencies. ``/predict`` needs
none of it: the handler reads and validates the body itself, answers every error as JSON and
never raises. This ASGI wrapper hands ``POST <prefix>/predict`` to the handler with a plain
Starlette ``Request`` and passes every other request (``/healthz``, ``/info``, ``/docs``, a
wrong method, a lifespan event) to the FastAPI app unchanged, so the OpenAPI document and
every other route stay FastAPI's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class PredictFastPath:
    """ASGI app: ``POST .../predict`` to ``handler``, anything else to ``app``."""

    def __init__(self, app: ASGIApp, handler: Callable[[Request], Awaitable[Response]], path: str = "/predict") -> None:
        self.app = app
        self.handler = handler
        self.path = path
        self.router = getattr(app, "router", None)  # Serve reads the routes of the app it was given

    def __getattr__(self, name: str) -> Any:  # Serve and FastAPI helpers inspect the wrapped app
        return getattr(self.app, name)

    def route_path(self, scope: Scope) -> str:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        return path[len(root) :] if root and path.startswith(root) else path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.route_path(scope) == self.path:
            response = await self.handler(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
