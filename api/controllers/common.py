"""Helpers shared by the controllers: the context, read-your-writes, documented problems."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec

from api.context import ApiContext
from api.problems import ProblemError
from api.schemas import ProblemOut
from application.errors import NotPairing
from application.phones import normalize_phone
from domain.errors import SessionIsDeleted
from domain.values import Status, session_uuid
from projections.status import SessionRow

log = logging.getLogger(__name__)
T = TypeVar("T")


def encoded(body: bytes) -> Response[Any]:
    """An answer whose JSON body was encoded already (by an expensive read): sent as it is.
    The handler's declared type (``Response[SomeOut]``) still documents it."""
    return Response(content=body, media_type=MediaType.JSON)


_DESCRIPTIONS = {
    400: "Malformed request: the body is not JSON, or a parameter is not valid",
    401: "No API key, or an unknown, mistyped or revoked one",
    403: "The operation needs the admin key",
    404: "No such session (or not reachable with this key)",
    406: "None of the media types in Accept can be served",
    409: (
        "The session's state does not allow this now, it changed meanwhile (retry), or it "
        "holds as many keys or webhook endpoints as its cap allows"
    ),
    413: "The request body is too large",
    422: "The body is JSON, but its fields or values are not valid",
    429: (
        "The session's rate limit is spent, it has as many expensive reads in flight as it "
        "may, or this address failed to authenticate too often; see Retry-After"
    ),
    502: "The gateway worker running the session failed while doing this; it was logged",
    503: "This server cannot check keys, or its views lag behind, right now; see Retry-After",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem+json answers a route can give."""
    return {
        status: ResponseSpec(
            data_container=ProblemOut,
            description=_DESCRIPTIONS[status],
            media_type="application/problem+json",
        )
        for status in statuses
    }


def context(request: Request[Any, Any, State]) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def call(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking application command in a worker thread."""
    return await asyncio.to_thread(function, *args)


async def settle(ctx: ApiContext, position: int | None, *, revocation: bool = False) -> None:
    """Wait until the views this client reads next include `position` (read-your-writes).

    The client's next request may reach any API process behind a load balancer, so this waits
    until every live API process has the change. For a `revocation` it first waits until
    every live API process has the revocation in force (it refuses the key, or every session
    key): that never depends on a projection, and no 2xx is answered before it holds.
    """
    if position is None:
        return
    deadline = time.monotonic() + ctx.write_wait_timeout
    if revocation and not await ctx.read_models.wait_revoked_everywhere(
        position, ctx.write_wait_timeout
    ):
        log.warning(
            "a revocation (position %s) was not in force everywhere within %ss",
            position,
            ctx.write_wait_timeout,
        )
        raise ProblemError(
            503,
            "views-lagging",
            f"the revocation was recorded (position {position}) but not every server has it "
            f"in force within {ctx.write_wait_timeout} s; send the same request again",
            {"Retry-After": "1"},
        )
    left = max(0.0, deadline - time.monotonic())
    if not await ctx.read_models.wait_everywhere(position, left):
        log.warning("views did not reach position %s within %ss", position, ctx.write_wait_timeout)
        in_force = "; the revocation is in force on every server" if revocation else ""
        raise ProblemError(
            503,
            "views-lagging",
            f"the change was recorded (position {position}) but the views have not caught up "
            f"within {ctx.write_wait_timeout} s{in_force}; read it again shortly",
            {"Retry-After": "1"},
        )


async def revoke_key(ctx: ApiContext, session_id: str, key_id: str, actor: str) -> None:
    """Revoke a key and answer once it is in force everywhere. A key revoked before (a retry)
    records nothing, and waits for the revocation recorded then, as the first try did."""
    position = await call(ctx.app.revoke_key, session_id, key_id, actor)
    if position is None:
        position = await call(ctx.app.recorded_revocation, session_id, key_id)
    await settle(ctx, position, revocation=True)


async def delete_session(ctx: ApiContext, session_id: str, actor: str) -> None:
    """Delete a session (its keys are revoked in the same save) and answer once that is in
    force everywhere. A session deleted before (a retry) waits for that deletion instead."""
    try:
        position = await call(ctx.app.delete, session_id, actor)
    except SessionIsDeleted:
        position = await call(ctx.app.recorded_revocation, session_id, None)
    await settle(ctx, position, revocation=True)


async def reached(ctx: ApiContext, view_position: Callable[[], int], position: int) -> bool:
    """Wait, within the write wait, until a view read from PostgreSQL (not copied in this
    process) has processed `position`; False if it has not in time."""
    deadline = time.monotonic() + ctx.write_wait_timeout
    pause = 0.002
    while await call(view_position) < position:
        if time.monotonic() > deadline:
            log.warning("a view did not reach position %s in time", position)
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True


def current_row(ctx: ApiContext, session_id: str) -> SessionRow:
    row = ctx.read_models.session(session_id)
    if row is None or row.is_deleted:
        raise ProblemError(404, "session-not-found", "no such session")
    return row


EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def utc_instant(value: datetime, name: str, status: int = 400) -> datetime:
    """`value`, an instant a client sent, in UTC. Refused (`status`: 400 for a query
    parameter, 422 for a body field) without a UTC offset: which instant it names is a guess.
    One that an offset puts just outside the calendar (``0001-01-01T00:00:00+05:00`` is in
    year 0 in UTC) is before or after anything recorded: it becomes the calendar's first or
    last instant, so that no computation with it overflows."""
    if value.utcoffset() is None:
        code = "invalid-parameter" if status == 400 else "invalid-request"
        raise ProblemError(status, code, f"`{name}` needs a UTC offset, as in 2026-11-25T12:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year == 1 else LATEST


def query_instant(value: str, name: str) -> datetime:
    """An instant a query parameter names (ISO 8601 with a UTC offset, or a Unix timestamp),
    in UTC; 400 otherwise. Such parameters are declared as text (OpenAPI format date-time)
    and read here because msgspec 0.22 raises a bare ValueError, not a validation error, for
    a timestamp that falls in year 10000, which Litestar would answer with a 500."""
    try:
        parsed = msgspec.convert(value, datetime, strict=False)
    except (msgspec.ValidationError, ValueError) as error:
        raise ProblemError(
            400, "invalid-parameter", f"`{name}` is not an instant with a UTC offset: {error}"
        ) from None
    return utc_instant(parsed, name)


async def request_pair_code(ctx: ApiContext, row: SessionRow, raw_phone: str) -> tuple[str, str]:
    """Link by phone number, for the API and the dashboard alike: (the phone as WhatsApp wants
    it, the code to type on it). `InvalidPhone` for what is not a phone number; `NotPairing`
    when the session is not showing QR codes (the view says so here; the worker holding the
    session checks again)."""
    phone = normalize_phone(raw_phone)
    if row.status != Status.CONNECTING or row.qr_code is None:
        raise NotPairing(
            f"a pairing code is only given while QR codes are shown: the session is {row.status}"
        )
    result = await ctx.gateway_calls.call(
        session_uuid(row.session_id), "pair_code", {"phone": phone}
    )
    return phone, str(result["code"])
