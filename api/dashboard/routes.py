"""The dashboard's routes as one router under ``/dashboard`` (outside the OpenAPI document),
its static files, its error pages, and the live streams' watcher in the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from api.context import ApiContext
from api.dashboard.bell import BELL_STATE, Bell
from api.dashboard.events import EventsController
from api.dashboard.listing import ListController, RenderedLists
from api.dashboard.live import ViewChanges
from api.dashboard.loaders import SessionReads
from api.dashboard.security import (
    DASHBOARD,
    PAGE_HEADERS,
    SESSIONS_STATE,
    SKIP_SESSION,
    CsrfRefused,
    Sessions,
    SignInRequired,
    check_csrf,
    cookie_config,
    require_sign_in,
    sign_in_url,
)
from api.dashboard.session import AdminCommands, SessionController, SessionPages
from api.dashboard.signin import SignInController
from api.dashboard.templating import STATIC, template_config
from api.dependencies import constants
from api.problems import as_problem

__all__ = ["Dashboard", "template_config"]


def _error_page(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    back = request.headers.get("referer") or ""
    return Template(
        template_name="error.html",
        context={
            "status": status,
            "title": title,
            "detail": detail,
            "back": back if back.startswith(str(request.base_url)) else "",
            "flash": {},
            "path": request.url.path,
        },
        status_code=status,
        headers={**PAGE_HEADERS, **(headers or {})},
    )


def dashboard_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Errors of the dashboard as pages (the API answers problem+json for the same ones)."""
    if isinstance(error, SignInRequired):
        if request.route_handler.opt.get(SKIP_SESSION):  # a live stream: nothing to redirect
            return Response("sign in first", status_code=401, media_type="text/plain")
        return Redirect(path=sign_in_url(error.next), status_code=303)
    if isinstance(error, CsrfRefused):
        return _error_page(
            request,
            403,
            "This form has expired",
            "The form did not carry this sign-in's security token (it was opened before you "
            "signed in again, or it did not come from this dashboard). Nothing was changed: "
            "go back, reload the page and try again.",
        )
    problem = as_problem(request, error)
    title = {
        404: "Not found",
        409: "Not possible now",
        429: "Too many tries",
        503: "Try again shortly",
    }.get(problem.status, "Something went wrong")
    detail = problem.detail[:1].upper() + problem.detail[1:]
    return _error_page(request, problem.status, title, detail, problem.headers)


@get("/", include_in_schema=False)
async def root() -> Redirect:
    """Nothing else lives at ``/``: the operator lands on the dashboard."""
    return Redirect(path=DASHBOARD + "/", status_code=302)


class Dashboard:
    """The dashboard as the app factory mounts it: routes, the cookie session's middleware
    (on the app, for dashboard paths only), what it keeps in the app's state, its lifespan."""

    def __init__(self, ctx: ApiContext) -> None:
        self.sessions = Sessions(cookie_config(ctx))
        self.middleware = self.sessions.config.middleware
        self.state = {SESSIONS_STATE: self.sessions, BELL_STATE: Bell(ctx.app)}
        self.changes = ViewChanges(ctx)
        #: What the dashboard's handlers receive beside the app's services (`api.dependencies`).
        self.dependencies = constants(
            {
                "admin_key_hash": ctx.admin_key_hash,
                "lists": RenderedLists(),
                "view_changes": self.changes,
                "commands": AdminCommands(app=ctx.app, writes=ctx.writes),
                "pages": SessionPages(
                    reads=SessionReads(
                        app=ctx.app,
                        read_models=ctx.read_models,
                        uptime=ctx.uptime,
                        webhook_queries=ctx.webhook_queries,
                    ),
                    default_requests_per_minute=ctx.default_requests_per_minute,
                    silence_after=ctx.silence_after,
                ),
            }
        )
        self.handlers: list[ControllerRouterHandler] = [
            Router(
                path="/",
                route_handlers=[
                    SignInController,
                    ListController,
                    SessionController,
                    EventsController,
                ],
                guards=[require_sign_in],
                dependencies=self.dependencies,
                before_request=check_csrf,
                exception_handlers={Exception: dashboard_error},
                include_in_schema=False,
            ),
            create_static_files_router(
                path=DASHBOARD + "/static",
                directories=[STATIC],
                name="dashboard-static",
                include_in_schema=False,
                cache_control=CacheControlHeader(max_age=86_400, public=True),
                opt={SKIP_SESSION: True},  # no cookie on a file a cache may keep
            ),
            root,
        ]

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """The watcher that wakes the live streams; stopping it ends the open streams."""
        self.changes.start()
        try:
            yield
        finally:
            await self.changes.close()
