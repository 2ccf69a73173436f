"""The Litestar app factory: routes, OpenAPI with the API-key scheme, one error handler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from litestar import Litestar, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from api.auth import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    RATE_LIMIT_STATE,
    failure_throttle,
    key_required,
)
from api.context import ApiContext
from api.controllers.alerts import AlertsController
from api.controllers.audit import AuditController
from api.controllers.health import HealthController
from api.controllers.history import HistoryController, UptimeController
from api.controllers.keys import KeysController
from api.controllers.messages import MessagesController
from api.controllers.metrics import metrics
from api.controllers.proxy import ProxyController
from api.controllers.sending import SendingController
from api.controllers.sessions import SessionsController
from api.controllers.simulator import SimulatorController
from api.controllers.streams import StreamsController, streams_lifespan
from api.controllers.webhooks import WebhooksController
from api.dashboard import Dashboard, template_config
from api.dependencies import providers
from api.docs import swagger_assets, swagger_plugin
from api.fastpath import expensive_refusal, status_fast_path
from api.openapi import complete_openapi
from api.problems import ProblemError, handle_exception
from api.requests import JsonRequest


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


def _allowed_methods(app: Litestar) -> dict[str, str]:
    return {
        route.path_format: ", ".join(sorted(route.methods))
        for route in app.routes
        if isinstance(route, HTTPRoute)
    }


def allow_header(app: ASGIApp) -> ASGIApp:
    """Answer ``OPTIONS`` with every method of the path in ``Allow``.

    Litestar 2.25 builds the automatic ``OPTIONS`` answer of a path when the first handler of
    that path is registered, so it lists only that handler's methods (``OPTIONS, POST`` for
    ``/sessions``, which also has ``GET``). The path's route knows them all.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
            await app(scope, receive, send)
            return
        allowed = _allowed_methods(scope["litestar_app"]).get(scope.get("path_template", ""))

        async def send_with_allow(message: Message) -> None:
            if allowed and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message["headers"] = [*headers, (b"allow", allowed.encode())]
            await send(message)

        await app(scope, receive, send_with_allow)

    return middleware


def no_nul_characters(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The app's guard, after the key: PostgreSQL text cannot hold a NUL character, so an id
    with one names nothing (404) and a query parameter with one is not valid (400), answered
    before any lookup."""
    if any("\x00" in str(value) for value in connection.path_params.values()):
        raise ProblemError(404, "not-found", "nothing has an id with a NUL character")
    for name, value in connection.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise ProblemError(400, "invalid-parameter", "a query parameter has a NUL character")


@get("/ping", include_in_schema=False, security=[])
async def ping() -> dict[str, str]:
    """A bare route for benchmarks: no key, no lookup."""
    return {"pong": "ok"}


def create_app(
    ctx: ApiContext,
    lifespan: Sequence[Callable[[Litestar], AbstractAsyncContextManager[Any]]] = (),
) -> Litestar:
    dashboard = Dashboard(ctx)
    handlers: list[ControllerRouterHandler] = [
        SessionsController,
        ProxyController,
        SendingController,
        KeysController,
        MessagesController,
        WebhooksController,
        AlertsController,
        HistoryController,
        AuditController,
        StreamsController,
        UptimeController,
        metrics,
        HealthController,
        ping,
        swagger_assets(),
        *dashboard.handlers,
    ]
    if ctx.simulator:
        handlers.append(SimulatorController)
    openapi = OpenAPIConfig(
        title="sessiond",
        version="0.1.0",
        description=(
            "Event-sourced WhatsApp session management. "
            "Send `x-api-key` on every call but the health probes."
        ),
        components=Components(
            security_schemes={
                API_KEY_SCHEME: SecurityScheme(
                    type="apiKey", name=API_KEY_HEADER, security_scheme_in="header"
                )
            }
        ),
        render_plugins=[swagger_plugin()],
        path="/schema",
    )
    app = Litestar(
        route_handlers=handlers,
        openapi_config=openapi,
        exception_handlers={Exception: handle_exception},
        guards=[key_required, no_nul_characters],  # before the parameters and the body
        dependencies=providers(ctx),  # what controllers receive (`api.dependencies`)
        # The failure throttle first: it covers every route, the status fast path included.
        middleware=[
            failure_throttle,
            status_fast_path,
            expensive_refusal,
            rate_limit_headers,
            allow_header,
            dashboard.middleware,
        ],
        state=State({"ctx": ctx, **dashboard.state}),
        lifespan=[*lifespan, dashboard.lifespan, streams_lifespan],
        on_shutdown=[ctx.expensive_reads.close],
        template_config=template_config(),
        request_class=JsonRequest,
        request_max_body_size=ctx.max_body_bytes,
        logging_config=None,  # the process's logging is set up by infra.runtime.logs
        debug=False,
    )
    complete_openapi(app)
    return app
