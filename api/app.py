"""The Litestar app factory: routes, OpenAPI with the API-key scheme, one error handler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from api.auth import API_KEY_HEADER, RATE_LIMIT_STATE
from api.context import ApiContext
from api.controllers.health import HealthController
from api.controllers.keys import KeysController
from api.controllers.sessions import SessionsController
from api.controllers.simulator import SimulatorController
from api.problems import handle_exception


def rate_limit_headers(app: ASGIApp) -> ASGIApp:
    """Add the RateLimit-* headers that the session's budget check left in the scope."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(RATE_LIMIT_STATE)
                if extra:
                    headers = list(message.get("headers", []))
                    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
                    message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


@get("/ping", include_in_schema=False, security=[])
async def ping() -> dict[str, str]:
    """A bare route for benchmarks: no key, no lookup."""
    return {"pong": "ok"}


def create_app(
    ctx: ApiContext,
    lifespan: Sequence[Callable[[Litestar], AbstractAsyncContextManager[Any]]] = (),
) -> Litestar:
    handlers: list[ControllerRouterHandler] = [
        SessionsController,
        KeysController,
        HealthController,
        ping,
    ]
    if ctx.simulator is not None:
        handlers.append(SimulatorController)
    security: list[SecurityRequirement] = [{"apiKey": []}]
    openapi = OpenAPIConfig(
        title="sessiond",
        version="0.1.0",
        description="Event-sourced WhatsApp session management. Send `x-api-key` on every call.",
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="apiKey", name=API_KEY_HEADER, security_scheme_in="header"
                )
            }
        ),
        security=security,
        render_plugins=[SwaggerRenderPlugin()],
        path="/schema",
    )
    return Litestar(
        route_handlers=handlers,
        openapi_config=openapi,
        exception_handlers={Exception: handle_exception},
        middleware=[rate_limit_headers],
        state=State({"ctx": ctx}),
        lifespan=list(lifespan),
        request_max_body_size=ctx.max_body_bytes,
        debug=False,
    )
