"""History and audit: a session's events, and the global log with a cursor."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from api.auth import API_KEY_SECURITY, Principal, SessionAccess, provide_access, provide_admin
from api.controllers.common import call, context, problems
from api.schemas import EventOut, EventPageOut
from domain.values import session_uuid
from projections.history import HistoryEntry, log_page, session_history

MAX_PAGE = 1000
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="Events per page")]
After = Annotated[
    int, QueryParameter(ge=0, description="Only events after this one (the `next` of a page)")
]


def _page(entries: list[HistoryEntry], limit: int, cursor: str) -> EventPageOut:
    items = [
        EventOut(
            session_id=e.session_id,
            version=e.version,
            type=e.type,
            timestamp=e.timestamp,
            data=e.data,
            position=e.position,
        )
        for e in entries
    ]
    last = getattr(entries[-1], cursor) if entries and len(entries) == limit else None
    return EventPageOut(items=items, next=last)


class HistoryController(Controller):
    tags = ["history"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {  # noqa: RUF012
        "access": Provide(provide_access),
        "admin": Provide(provide_admin),
    }

    @get("/sessions/{session_id:str}/events", responses=problems(400, 401, 404, 429, 503))
    async def session_events(
        self,
        request: Request[Any, Any, State],
        access: NamedDependency[SessionAccess],
        after: After = 0,
        limit: Limit = 100,
    ) -> EventPageOut:
        """Every event of the session in order, paged by version (`after`, `next`)."""
        app = context(request).app
        uuid = session_uuid(access.session.session_id)
        entries = await call(session_history, app, uuid, after, limit)
        return _page(entries, limit, "version")

    @get("/events", responses=problems(400, 401, 403))
    async def log(
        self,
        request: Request[Any, Any, State],
        admin: NamedDependency[Principal],
        after: After = 0,
        limit: Limit = 100,
    ) -> EventPageOut:
        """The global log of every session (admin), paged by position (`after`, `next`)."""
        entries = await call(log_page, context(request).app, after, limit)
        return _page(entries, limit, "position")
