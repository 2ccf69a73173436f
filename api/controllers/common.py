"""Helpers shared by the controllers: read-your-writes (`Writes`), documented problems."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Response
from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec

from api.context import GatewayCalls
from api.problems import ProblemError
from api.schemas import ProblemOut
from application.errors import NotPairing
from application.phones import normalize_phone
from domain.values import Status, session_uuid
from projections.readmodels import ReadModels
from projections.status import SessionRow

if TYPE_CHECKING:
    from api.auth import Principal

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


def current_row(read_models: ReadModels, session_id: str) -> SessionRow:
    row = read_models.session(session_id)
    if row is None or row.is_deleted:
        raise ProblemError(404, "session-not-found", "no such session")
    return row


def target_session(
    caller: Principal, session_id: str | None, read_models: ReadModels
) -> str | None:
    """The session a new resource created by `caller` belongs to: the one asked for (None:
    every session, the admin's only), always the caller's own for a session key. 404 for
    another session's, an unknown or a deleted one."""
    if not caller.is_admin:
        if session_id not in (None, caller.session_id):
            raise ProblemError(404, "session-not-found", "no such session")
        session_id = caller.session_id
    if session_id is not None:
        current_row(read_models, session_id)
    return session_id


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


async def request_pair_code(
    gateway_calls: GatewayCalls, row: SessionRow, raw_phone: str
) -> tuple[str, str]:
    """Link by phone number, for the API and the dashboard alike: (the phone as WhatsApp wants
    it, the code to type on it). `InvalidPhone` for what is not a phone number; `NotPairing`
    when the session is not showing QR codes (the view says so here; the worker holding the
    session checks again)."""
    phone = normalize_phone(raw_phone)
    if row.status != Status.CONNECTING or row.qr_code is None:
        raise NotPairing(
            f"a pairing code is only given while QR codes are shown: the session is {row.status}"
        )
    result = await gateway_calls.call(session_uuid(row.session_id), "pair_code", {"phone": phone})
    return phone, str(result["code"])
