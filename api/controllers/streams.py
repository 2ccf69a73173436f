"""The live event streams: a session's events, and every session's (admin), as Server-Sent
Events with the webhooks' types and bodies (see `api.streaming`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Litestar, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter

from api.auth import (
    API_KEY_HEADER,
    API_KEY_SECURITY,
    Principal,
    SessionAccess,
    provide_access,
    provide_admin,
)
from api.context import ApiContext
from api.controllers.common import context, problems
from api.problems import ProblemError
from api.streaming import EVENT_STREAM, EventStream, EventStreamResponse, StreamCounts
from application.keys import hash_key
from domain.webhook import EVENT_TYPES
from projections.livefeed import (
    InvalidEventTypes,
    InvalidPosition,
    LiveFeed,
    Selection,
    parse_types,
    resume_position,
)

#: Whose streams the admin's global streams count as (they have no cap).
GLOBAL = "*global*"
COUNTS_STATE = "event_streams"

LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        required=False,
        description=(
            "The id of the last event received: the stream resumes right after it (a "
            "browser's EventSource sends it by itself when it reconnects). Wins over `after`"
        ),
    ),
]
After = Annotated[
    str | None,
    QueryParameter(
        pattern=r"^[0-9]{1,18}$",
        description=(
            "Resume after this position (the id of an event of the stream; 0: from the "
            "first event recorded). Without it, or Last-Event-ID, the stream starts now"
        ),
    ),
]
Types = Annotated[
    list[str] | None,
    QueryParameter(
        description=(
            "Only these event types (comma-separated or repeated): "
            + ", ".join(EVENT_TYPES)
            + ". Default: every type"
        ),
    ),
]

_STREAM_DOC = (
    "Server-Sent Events: each event has `id:` its position in the log, `event:` its type "
    "and `data:` the webhook body (`{type, timestamp, data}`); a comment every heartbeat; "
    "a last `end` event (`{reason, resumeAfter}`) when the server ends the stream "
    "(`too-slow`, `key-revoked`, `key-expired`, `session-deleted`, `keys-unverifiable`, "
    "`server-stopping`, `signed-out`)"
)


def _ok() -> ResponseSpec:
    return ResponseSpec(data_container=str, description=_STREAM_DOC, media_type=EVENT_STREAM)


@asynccontextmanager
async def streams_lifespan(app: Litestar) -> AsyncIterator[None]:
    """The streams' counts, and their end when the server is asked to stop (the HTTP server
    drains open connections before it shuts the app down: a stream must not hold it up)."""
    # Here, not at the top: the dashboard's routes import this module.
    from api.dashboard.live import on_stop_signal  # noqa: PLC0415

    counts = StreamCounts()
    app.state[COUNTS_STATE] = counts
    on_stop_signal(counts.closing.set)
    try:
        yield
    finally:
        counts.closing.set()
        ctx: ApiContext = app.state.ctx
        if ctx.live_feed is not None:
            ctx.live_feed.shutdown()


def _counts(request: Request[Any, Any, State]) -> StreamCounts:
    counts: StreamCounts = request.app.state[COUNTS_STATE]
    return counts


def _selection(session_id: str | None, types: list[str] | None) -> Selection:
    try:
        return Selection(session_id, parse_types(types or ()))
    except InvalidEventTypes as error:
        raise ProblemError(422, "invalid-event-type", str(error)) from None


async def _position(ctx: ApiContext, last_event_id: str | None, after: str | None) -> int:
    try:
        position = resume_position(last_event_id, after)
    except InvalidPosition as error:
        raise ProblemError(400, "invalid-position", str(error)) from None
    head = await _feed(ctx).head()
    if position is None:
        return head
    if position > head:
        raise ProblemError(
            400,
            "invalid-position",
            f"position {position} is beyond the last event recorded ({head}): "
            "send the id of an event this server sent",
        )
    return position


def _feed(ctx: ApiContext) -> LiveFeed:
    if ctx.live_feed is None:  # pragma: no cover - the composition root always gives one
        raise ProblemError(503, "streams-unavailable", "this server does not stream events")
    return ctx.live_feed


def _key_guard(ctx: ApiContext, key_hash: str, session_id: str) -> Callable[[], str | None]:
    """Why a session key's stream must end now: its key revoked or its session deleted (as
    this process's revocations say, whatever the projector does), its key past its expiry,
    or this process's copy too old to tell (it refuses keys then)."""
    read_models = ctx.read_models

    def guard() -> str | None:
        if not read_models.is_fresh():
            return "keys-unverifiable"
        if read_models.accepted_key(key_hash) is not None:
            return None
        if read_models.session_deleted(session_id):
            return "session-deleted"
        key = read_models.key_by_hash(key_hash)
        if (
            key is not None
            and key.revoked_at is None
            and key.expires_at is not None
            and key.expires_at <= datetime.now(UTC)
        ):
            return "key-expired"
        return "key-revoked"

    return guard


def _admin_guard(ctx: ApiContext, session_id: str) -> Callable[[], str | None]:
    """Why an admin's stream of a session must end now: its session deleted."""

    def guard() -> str | None:
        return "session-deleted" if ctx.read_models.session_deleted(session_id) else None

    return guard


class StreamsController(Controller):
    tags = ["history"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {  # noqa: RUF012
        "access": Provide(provide_access),
        "admin": Provide(provide_admin),
    }

    @get(
        "/sessions/{session_id:str}/events/stream",
        responses={200: _ok(), **problems(400, 401, 404, 422, 429, 503)},
        operation_id="streamSessionEvents",
        media_type=EVENT_STREAM,
    )
    async def session_stream(
        self,
        request: Request[Any, Any, State],
        access: NamedDependency[SessionAccess],
        last_event_id: LastEventId = None,
        after: After = None,
        types: Types = None,
    ) -> EventStreamResponse:
        """The session's events, live, as Server-Sent Events (the session's key or admin).
        Resumes after `Last-Event-ID` (or `after`) with nothing missed or repeated."""
        ctx = context(request)
        session_id = access.session.session_id
        selection = _selection(session_id, types)
        counts = _counts(request)
        if not access.principal.is_admin and counts.of(session_id) >= ctx.max_streams_per_session:
            raise ProblemError(
                429,
                "stream-cap-reached",
                f"this session already holds {ctx.max_streams_per_session} event streams on "
                "this server (SESSIOND_MAX_STREAMS_PER_SESSION); close one first",
                {"Retry-After": "1"},
            )
        position = await _position(ctx, last_event_id, after)
        if access.principal.is_admin:
            guard = _admin_guard(ctx, session_id)
        else:
            guard = _key_guard(ctx, hash_key(request.headers[API_KEY_HEADER]), session_id)
        return EventStreamResponse(
            EventStream(
                feed=_feed(ctx),
                selection=selection,
                position=position,
                guard=guard,
                heartbeat=ctx.stream_heartbeat,
                counts=counts,
                owner=session_id,
            )
        )

    @get(
        "/events/stream",
        responses={200: _ok(), **problems(400, 401, 403, 422, 429)},
        operation_id="streamEvents",
        media_type=EVENT_STREAM,
    )
    async def log_stream(
        self,
        request: Request[Any, Any, State],
        admin: NamedDependency[Principal],
        last_event_id: LastEventId = None,
        after: After = None,
        types: Types = None,
    ) -> EventStreamResponse:
        """Every session's events, live, as Server-Sent Events (admin). Resumes after
        `Last-Event-ID` (or `after`) with nothing missed or repeated."""
        return await every_session_stream(request, last_event_id, after, types)


async def every_session_stream(
    request: Request[Any, Any, State],
    last_event_id: str | None,
    after: str | None,
    types: list[str] | None,
    until: float | None = None,
) -> EventStreamResponse:
    """The admin's stream of every session's events (`until`: a monotonic time at which it
    ends, ``signed-out``: a dashboard operator's sign-in expiry)."""
    ctx = context(request)
    selection = _selection(None, types)
    position = await _position(ctx, last_event_id, after)

    def guard() -> str | None:
        return "signed-out" if until is not None and time.monotonic() >= until else None

    return EventStreamResponse(
        EventStream(
            feed=_feed(ctx),
            selection=selection,
            position=position,
            guard=guard,
            heartbeat=ctx.stream_heartbeat,
            counts=_counts(request),
            owner=GLOBAL,
        )
    )
