"""History and audit: a session's events, and the global log with a cursor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from api import reads
from api.auth import API_KEY_SECURITY, Principal, SessionAccess, provide_access, provide_admin
from api.context import Service
from api.controllers.common import encoded, problems, query_instant
from api.expensive import LocalReads
from api.fastpath import EXPENSIVE
from api.problems import ProblemError
from api.schemas import EventPageOut, UptimeSeriesOut
from projections.status import window_start
from projections.uptime import BUCKETS

MAX_PAGE = 1000
#: Whose expensive reads the admin's pages of the global log count as.
ADMIN_LOG = "*global-log*"
MAX_BUCKETS = 10_000  # a year of hours fits
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="Events per page")]
After = Annotated[
    int, QueryParameter(ge=0, description="Only events after this one (the `next` of a page)")
]


class EventRoutes(Controller):
    """What the routes of recorded and live events share: a session's events are read with
    its key or the admin key (`access`), every session's with the admin key (`admin`)."""

    tags = ["history"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {  # noqa: RUF012
        "access": Provide(provide_access),
        "admin": Provide(provide_admin),
    }


class HistoryController(EventRoutes):
    @get(
        "/sessions/{session_id:str}/events",
        opt={EXPENSIVE: True},  # refused early beyond the session's cap (`api.fastpath`)
        responses=problems(400, 401, 404, 429, 503),
        operation_id="listSessionEvents",
    )
    async def session_events(
        self,
        access: NamedDependency[SessionAccess],
        *,
        expensive: Service[LocalReads],
        after: After = 0,
        limit: Limit = 100,
    ) -> Response[EventPageOut]:
        """Every event of the session in order, paged by version (`after`, `next`)."""
        session_id = access.session.session_id
        body = await expensive.run(session_id, reads.session_events, session_id, after, limit)
        return encoded(body)

    @get("/events", responses=problems(400, 401, 403, 429), operation_id="listEvents")
    async def log(
        self,
        admin: NamedDependency[Principal],
        *,
        expensive: Service[LocalReads],
        after: After = 0,
        limit: Limit = 100,
    ) -> Response[EventPageOut]:
        """The global log of every session (admin), paged by position (`after`, `next`)."""
        body = await expensive.run(ADMIN_LOG, reads.log_events, after, limit)
        return encoded(body)


class UptimeController(Controller):
    tags = ["history"]  # noqa: RUF012
    security = API_KEY_SECURITY
    dependencies = {"access": Provide(provide_access)}  # noqa: RUF012

    @get(
        "/sessions/{session_id:str}/uptime",
        opt={EXPENSIVE: True},
        responses=problems(400, 401, 404, 429, 503),
        operation_id="getSessionUptime",
    )
    async def uptime(
        self,
        access: NamedDependency[SessionAccess],
        *,
        expensive: Service[LocalReads],
        start: Annotated[
            str | None,
            QueryParameter(
                name="from",
                format="date-time",
                description="Start of the window, with a UTC offset (default: midnight UTC 29 "
                "days before the day of `to`, as in the status, or the session's creation if "
                "later)",
            ),
        ] = None,
        end: Annotated[
            str | None,
            QueryParameter(
                name="to",
                format="date-time",
                description="End of the window, with a UTC offset (default and at most: now)",
            ),
        ] = None,
        bucket: Annotated[
            Literal["hour", "day"], QueryParameter(description="Length of each point")
        ] = "day",
    ) -> Response[UptimeSeriesOut]:
        """The uptime series analysts chart: per hour or day, the seconds the session was in
        service (meant to run, from its first link on) and those it was connected, and the
        uptime as a percentage (0-100, two decimals). The time before the first link and the
        time stopped count neither way; a bucket with no time in service has no uptime (null).
        The default window's uptime is the status's `metrics.uptime` at the same instant."""
        row = access.session
        now = datetime.now(UTC)
        stop = now if end is None else min(now, query_instant(end, "to"))
        if start is not None:
            begin = query_instant(start, "from")
        elif stop > row.created_at:  # then its window's start is a date that exists
            begin = max(row.created_at, window_start(stop))
        else:
            begin = row.created_at  # an invalid window, refused below
        step = BUCKETS[bucket]
        if begin >= stop:
            raise ProblemError(400, "invalid-window", "`from` must be before `to`, and before now")
        if (stop - begin) / step > MAX_BUCKETS:
            raise ProblemError(
                400,
                "window-too-long",
                f"at most {MAX_BUCKETS} buckets per request: use bucket=day or a shorter window",
            )
        body = await expensive.run(
            row.session_id, reads.uptime_series, row.session_id, (begin, stop), bucket
        )
        return encoded(body)
