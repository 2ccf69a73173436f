"""The live event streams: a session's events, and every session's (admin), as Server-Sent
Events with the webhooks' types and bodies (see `api.streaming`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter

from api.auth import (
    API_KEY_HEADER,
    Principal,
    SessionAccess,
)
from api.context import ApiContext, Service
from api.controllers.common import problems
from api.controllers.history import EventRoutes
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
from projections.readmodels import ReadModels

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


@dataclass(frozen=True)
class Resume:
    """Where a stream resumes (`Last-Event-ID`, else `after`; neither: now), and which
    event types it carries (None: every type)."""

    last_event_id: str | None
    after: str | None
    types: list[str] | None


def provide_resume(
    last_event_id: LastEventId = None, after: After = None, types: Types = None
) -> Resume:
    """The stream parameters of a request (a dependency of every stream route)."""
    return Resume(last_event_id, after, types)


RESUME = {"resume": Provide(provide_resume, sync_to_thread=False)}

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


async def _position(feed: LiveFeed, last_event_id: str | None, after: str | None) -> int:
    try:
        position = resume_position(last_event_id, after)
    except InvalidPosition as error:
        raise ProblemError(400, "invalid-position", str(error)) from None
    head = await feed.head()
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


def _feed(live_feed: LiveFeed | None) -> LiveFeed:
    if live_feed is None:  # pragma: no cover - the composition root always gives one
        raise ProblemError(503, "streams-unavailable", "this server does not stream events")
    return live_feed


def _key_guard(read_models: ReadModels, key_hash: str, session_id: str) -> Callable[[], str | None]:
    """Why a session key's stream must end now: its key revoked or its session deleted (as
    this process's revocations say, whatever the projector does), its key past its expiry,
    or this process's copy too old to tell (it refuses keys then)."""

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


def _admin_guard(read_models: ReadModels, session_id: str) -> Callable[[], str | None]:
    """Why an admin's stream of a session must end now: its session deleted."""

    def guard() -> str | None:
        return "session-deleted" if read_models.session_deleted(session_id) else None

    return guard


class EventStreams:
    """Opens this server's live event streams, each from where its client resumes."""

    def __init__(
        self, live_feed: LiveFeed | None, read_models: ReadModels, heartbeat: float, cap: int
    ) -> None:
        self.live_feed = live_feed
        self.read_models = read_models
        self.heartbeat = heartbeat
        #: Streams one session may hold open in this process (the admin's are not counted).
        self.cap = cap

    @classmethod
    def of(cls, ctx: ApiContext) -> EventStreams:
        return cls(
            ctx.live_feed, ctx.read_models, ctx.stream_heartbeat, ctx.max_streams_per_session
        )

    async def open(
        self,
        request: Request[Any, Any, State],
        session_id: str | None,
        resume: Resume,
        guard: Callable[[], str | None],
    ) -> EventStreamResponse:
        """The stream of `session_id`'s events (None: every session's), from where `resume`
        says, that ends when `guard` says why."""
        selection = _selection(session_id, resume.types)
        feed = _feed(self.live_feed)
        position = await _position(feed, resume.last_event_id, resume.after)
        return EventStreamResponse(
            EventStream(
                feed=feed,
                selection=selection,
                position=position,
                guard=guard,
                heartbeat=self.heartbeat,
                counts=_counts(request),
                owner=session_id or GLOBAL,
            )
        )


class StreamsController(EventRoutes):
    dependencies = {**EventRoutes.dependencies, **RESUME}  # noqa: RUF012

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
        resume: NamedDependency[Resume],
        *,
        streams: Service[EventStreams],
    ) -> EventStreamResponse:
        """The session's events, live, as Server-Sent Events (the session's key or admin).
        Resumes after `Last-Event-ID` (or `after`) with nothing missed or repeated."""
        session_id = access.session.session_id
        _selection(session_id, resume.types)  # a type is checked before the cap
        if not access.principal.is_admin and _counts(request).of(session_id) >= streams.cap:
            raise ProblemError(
                429,
                "stream-cap-reached",
                f"this session already holds {streams.cap} event streams on "
                "this server (SESSIOND_MAX_STREAMS_PER_SESSION); close one first",
                {"Retry-After": "1"},
            )
        if access.principal.is_admin:
            guard = _admin_guard(streams.read_models, session_id)
        else:
            key_hash = hash_key(request.headers[API_KEY_HEADER])
            guard = _key_guard(streams.read_models, key_hash, session_id)
        return await streams.open(request, session_id, resume, guard)

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
        resume: NamedDependency[Resume],
        *,
        streams: Service[EventStreams],
    ) -> EventStreamResponse:
        """Every session's events, live, as Server-Sent Events (admin). Resumes after
        `Last-Event-ID` (or `after`) with nothing missed or repeated."""
        return await every_session_stream(streams, request, resume)


async def every_session_stream(
    streams: EventStreams,
    request: Request[Any, Any, State],
    resume: Resume,
    until: float | None = None,
) -> EventStreamResponse:
    """The admin's stream of every session's events (`until`: a monotonic time at which it
    ends, ``signed-out``: a dashboard operator's sign-in expiry)."""

    def guard() -> str | None:
        return "signed-out" if until is not None and time.monotonic() >= until else None

    return await streams.open(request, None, resume, guard)
