"""Who is calling (header ``x-api-key``) and what they may reach.

A session key reaches its own session only: any other session answers 404, so existence is
never revealed. No key, an unknown, mistyped or revoked key answers 401. Those answers are
given before the rate limit is counted, so they never spend a session's budget.

Guessing is throttled per client address (`failure_throttle`): a key that is sent and not
accepted (admin or session, malformed, unknown or revoked; a missing key is no guess and is
not counted) and a failed dashboard sign-in count as failures; an address with more than the
limit in a minute gets 429 on every route but the probes, before its key is even looked at,
so a locked-out guesser cannot learn whether a key is valid.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement
from litestar.params import FromPath
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.context import ApiContext
from api.problems import ProblemError
from api.ratelimit import client_address
from api.scopes import ADMIN_ONLY, required_scope
from application.keys import SESSION_KEY_KIND, hash_key, key_kind
from domain.access import allows
from domain.values import ADMIN_ACTOR, is_session_id, key_actor
from projections.status import SessionRow

API_KEY_HEADER = "x-api-key"
API_KEY_SCHEME = "apiKey"
# The OpenAPI security of every route that needs a key (the health probes need none).
API_KEY_SECURITY: list[SecurityRequirement] = [{API_KEY_SCHEME: []}]
RATE_LIMIT_STATE = "ratelimit_headers"
#: Set in the request's scope state when a credential sent was refused (counted as a failure).
AUTH_FAILED_STATE = "auth_failed"
#: Paths that are never throttled: the probes and the API's description need no key, and a
#: load balancer probing from a locked-out address must still see the server.
UNTHROTTLED = ("/health/", "/metrics", "/ping", "/schema")


@dataclass(frozen=True)
class Principal:
    """The caller: the operator (admin key) or a client holding one session's key."""

    is_admin: bool
    key_id: str | None = None
    session_id: str | None = None
    #: What a session key may do (`domain.access.Scope` values); None: everything.
    scopes: tuple[str, ...] | None = None

    @property
    def actor(self) -> str:
        return ADMIN_ACTOR if self.is_admin or self.key_id is None else key_actor(self.key_id)

    def check_scope(self, scope: str) -> None:
        """Raise 403 ``scope-missing`` (naming `scope`) unless this caller holds `scope`."""
        if self.is_admin or allows(self.scopes, scope):
            return
        held = ", ".join(self.scopes or ())
        raise ProblemError(
            403,
            "scope-missing",
            f"this key lacks the scope {scope} that this operation needs (it has {held})",
            extra={"requiredScope": scope},
        )


@dataclass(frozen=True)
class SessionAccess:
    """A caller allowed to reach one session, and that session's row as seen now."""

    principal: Principal
    session: SessionRow

    @property
    def actor(self) -> str:
        return self.principal.actor


def _context(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiContext:
    ctx: ApiContext = connection.app.state.ctx
    return ctx


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "unauthorized", detail, {"WWW-Authenticate": "ApiKey"})


def note_failed_authentication(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Count this request as a failed authentication of its client address."""
    connection.scope.setdefault("state", {})[AUTH_FAILED_STATE] = True


def _refused(request: ASGIConnection[Any, Any, Any, Any], detail: str) -> ProblemError:
    note_failed_authentication(request)
    return _unauthorized(detail)


def authenticate(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    ctx = _context(request)
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        raise _unauthorized(f"send an API key in the {API_KEY_HEADER} header")
    kind = key_kind(key)
    key_hash = hash_key(key)
    if kind != SESSION_KEY_KIND:
        if hmac.compare_digest(key_hash, ctx.admin_key_hash):
            return Principal(is_admin=True)
        raise _refused(request, "the API key is not valid")
    if not ctx.read_models.is_fresh():
        raise ProblemError(
            503,
            "views-unavailable",
            "this server cannot check keys right now; try again shortly",
            {"Retry-After": "1"},
        )
    row = ctx.read_models.accepted_key(key_hash)
    if row is None:
        raise _refused(request, "the API key is not valid, or it has been revoked or expired")
    ctx.read_models.note_key_use(row.key_id, datetime.now(UTC))
    return Principal(
        is_admin=False,
        key_id=row.key_id,
        session_id=row.session_id,
        scopes=None if row.scopes is None else tuple(row.scopes),
    )


def key_required(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app's guard: a route that needs a key (its OpenAPI security names one) checks it
    before anything else, so a missing or invalid key answers 401 before the parameters or
    the body are read, and a caller without a key learns nothing from validation errors.

    A session key is also checked for the route's scope here (403 ``scope-missing``), before
    the body, unless the route names another session: that one answers 404 whatever the
    key's scopes (`_access`), so existence is never revealed."""
    if isinstance(handler, HTTPRouteHandler) and handler.resolve_security():
        principal = authenticate(connection)
        if principal.is_admin or not handler.include_in_schema:  # OPTIONS: no operation
            return
        named = connection.path_params.get("session_id")
        scope = required_scope(handler)
        if scope != ADMIN_ONLY and (named is None or named == principal.session_id):
            principal.check_scope(scope)


async def provide_admin(request: Request[Any, Any, State]) -> Principal:
    """Dependency of admin-only routes that name no session."""
    principal = authenticate(request)
    if not principal.is_admin:
        raise ProblemError(403, "admin-only", "this needs the operator's admin key")
    return principal


async def _access(
    request: Request[Any, Any, State], session_id: str, *, admin_only: bool
) -> SessionAccess:
    ctx = _context(request)
    principal = authenticate(request)
    if not principal.is_admin and principal.session_id != session_id:
        raise ProblemError(404, "session-not-found", "no such session")
    row = ctx.read_models.session(session_id)
    if row is None or row.is_deleted:
        raise ProblemError(404, "session-not-found", "no such session")
    if admin_only and not principal.is_admin:
        raise ProblemError(403, "admin-only", "this needs the operator's admin key")
    if not principal.is_admin:
        scope = required_scope(request.scope.get("route_handler"))
        if scope == ADMIN_ONLY:
            raise ProblemError(403, "admin-only", "this needs the operator's admin key")
        principal.check_scope(scope)
        per_minute = row.requests_per_minute or ctx.default_requests_per_minute
        decision = await ctx.limiter.hit(session_id, per_minute)
        if decision.allowed:
            request.scope["state"][RATE_LIMIT_STATE] = decision.headers()
        else:
            raise ProblemError(
                429,
                "rate-limited",
                f"this session allows {per_minute} requests per minute; "
                f"try again in {decision.reset_after} s",
                decision.headers(),
            )
    return SessionAccess(principal, row)


async def provide_access(
    request: Request[Any, Any, State], session_id: FromPath[str]
) -> SessionAccess:
    """Dependency of routes of one session: admin key, or that session's own key."""
    return await _access(request, session_id, admin_only=False)


async def provide_admin_access(
    request: Request[Any, Any, State], session_id: FromPath[str]
) -> SessionAccess:
    """Dependency of admin-only routes of one session."""
    return await _access(request, session_id, admin_only=True)


async def provide_admin_of_session(
    request: Request[Any, Any, State], session_id: FromPath[str]
) -> Principal:
    """Dependency of admin-only routes of one session that also answer for a session that
    is deleted (a delete that is sent again): a session key gets what `_access` gives it."""
    principal = authenticate(request)
    if principal.is_admin:
        if not is_session_id(session_id):
            raise ProblemError(404, "session-not-found", "no such session")
        return principal
    await _access(request, session_id, admin_only=True)
    raise AssertionError("a session key never reaches an admin-only route")  # pragma: no cover


async def provide_caller(request: Request[Any, Any, State]) -> Principal:
    """Dependency of routes that name no session but serve both kinds of key (webhooks): a
    session key is checked against its session (alive, within its rate limit)."""
    principal = authenticate(request)
    if not principal.is_admin:
        assert principal.session_id is not None
        await _access(request, principal.session_id, admin_only=False)
    return principal


def failure_throttle(app: ASGIApp) -> ASGIApp:
    """Refuse a locked-out client address before anything else (429 with Retry-After), and
    count the request as a failure once it has been answered refused
    (`note_failed_authentication`)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"].startswith(UNTHROTTLED):
            await app(scope, receive, send)
            return
        ctx: ApiContext = scope["litestar_app"].state.ctx
        address = client_address(scope, ctx.trusted_proxies)
        wait = await ctx.failure_throttle.locked_out(address)
        if wait is not None:
            raise ProblemError(
                429,
                "too-many-failures",
                f"too many failed authentications from this address; try again in {wait} s",
                {"Retry-After": str(wait)},
            )

        counted = False

        async def send_once_counted(message: Message) -> None:
            # A failure is counted before its answer leaves: a client that waits for each
            # answer cannot get its next guess in ahead of the count.
            nonlocal counted
            if (
                not counted
                and message["type"] == "http.response.start"
                and scope.get("state", {}).get(AUTH_FAILED_STATE)
            ):
                counted = True
                await ctx.failure_throttle.failed(address)
            await send(message)

        try:
            await app(scope, receive, send_once_counted)
        finally:
            if not counted and scope.get("state", {}).get(AUTH_FAILED_STATE):
                await ctx.failure_throttle.failed(address)

    return middleware
