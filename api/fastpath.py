"""The status read, and the refusal of an expensive read beyond its session's cap, answered
without Litestar's per-request machinery.

`GET /sessions/{id}/status` is what clients poll. Routing stays Litestar's, and so do the
access check (`provide_access`: key, session scope, rate limit) and every error answer
(`handle_exception`); only the parameter model, the handler call and the response object
are skipped, and the body is encoded straight to ASGI. The route's handler stays declared
for the OpenAPI document and answers any request this path does not take. The throttle of
failed authentications (`api.auth.failure_throttle`) runs before this path, as before every
route: a locked-out address is refused here too, and a refused key here is counted.

`expensive_refusal` does the same for the expensive reads of a session (its past state, its
uptime series, its history pages: routes marked `EXPENSIVE`) while that session has as many
in flight as it may: the key, its scope and the rate limit are checked as on the route, then
the 429 ``expensive-reads-spent`` is answered (after the pool's refusal pause, which costs
nothing but a timer), before the query is parsed and the handler's dependencies resolved. A
client that floods a session's expensive reads costs the event loop little more than a status
read per refused request, and gets at most one refusal per connection and pause.

A webhook replay (``POST /webhooks/{id}/replay``, marked `EXPENSIVE_REPLAY`) is refused the
same way, before its body is read and its endpoint looked up in the database, once this process
has replayed that endpoint before (so it knows whose reads it counts as: an endpoint never
changes session): the admin key is refused 429 as on the route; a session key is checked as on
the route (scope, rate limit) and refused if the endpoint is its session's, and otherwise goes
on to the route (which answers 404 without telling whose endpoint it is).
"""

from __future__ import annotations

from urllib.parse import parse_qs

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from api.auth import RATE_LIMIT_STATE, authenticate, provide_access
from api.presenters import status_out
from api.problems import handle_exception
from api.requests import JsonRequest

FAST_STATUS = "fast_status"  # set in the `opt` of the route handler this path answers
#: Set in the `opt` of a route of one session's expensive reads: True, or the name of the
#: query parameter that makes the route expensive (``asOf`` of ``GET /sessions/{id}``).
EXPENSIVE = "expensive"
#: Set in the `opt` of the webhook replay route (one endpoint's, counted as its tenant's).
EXPENSIVE_REPLAY = "expensive_replay"
_ENCODER = msgspec.json.Encoder()


def status_fast_path(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if (
            scope["type"] != ScopeType.HTTP
            or scope["method"] != "GET"
            or handler is None
            or not handler.opt.get(FAST_STATUS)
        ):
            await app(scope, receive, send)
            return
        request = JsonRequest(scope, receive)
        try:
            access = await provide_access(request, scope["path_params"]["session_id"])
            body = _ENCODER.encode(status_out(access.session))
        except Exception as error:
            await _answer_error(request, error, scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        extra: dict[str, str] = scope["state"].get(RATE_LIMIT_STATE) or {}
        headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return middleware


async def _answer_error(
    request: JsonRequest, error: Exception, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer `error` exactly as the app's exception handler would."""
    response = handle_exception(request, error)
    response.headers.update(scope["state"].get(RATE_LIMIT_STATE) or {})
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def _is_expensive(scope: Scope) -> bool:
    handler = scope.get("route_handler")
    if handler is None or scope["type"] != ScopeType.HTTP or scope["method"] != "GET":
        return False
    marked = handler.opt.get(EXPENSIVE)
    if not marked:
        return False
    if marked is True:
        return True
    return str(marked) in parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)


def _is_replay(scope: Scope) -> bool:
    handler = scope.get("route_handler")
    return (
        handler is not None
        and scope["type"] == ScopeType.HTTP
        and scope["method"] == "POST"
        and bool(handler.opt.get(EXPENSIVE_REPLAY))
    )


async def _refuse_replay(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """A replay of an endpoint whose tenant has as many expensive reads in flight as it may:
    429 before its body is read, unless the key is not the endpoint's (then the route)."""
    reads = scope["litestar_app"].state.ctx.expensive_reads
    tenant = reads.tenant_of(scope["path_params"]["webhook_id"])
    if tenant is None or not reads.spent(tenant):
        await app(scope, receive, send)
        return
    request = JsonRequest(scope, receive)
    try:
        principal = authenticate(request)
        if not principal.is_admin:
            if principal.session_id != tenant:
                await app(scope, receive, send)  # not its endpoint: the route's own 404
                return
            await provide_access(request, tenant)  # its scope and rate limit, as the route
        await reads.refuse(tenant)
    except Exception as error:
        await _answer_error(request, error, scope, receive, send)


def expensive_refusal(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_expensive(scope):
            if _is_replay(scope):
                await _refuse_replay(app, scope, receive, send)
                return
            await app(scope, receive, send)
            return
        reads = scope["litestar_app"].state.ctx.expensive_reads
        named = scope["path_params"]["session_id"]
        if not reads.spent(named):
            await app(scope, receive, send)
            return
        request = JsonRequest(scope, receive)
        try:
            access = await provide_access(request, named)
            await reads.refuse(access.session.session_id)
        except Exception as error:
            await _answer_error(request, error, scope, receive, send)

    return middleware
