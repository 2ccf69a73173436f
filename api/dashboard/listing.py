"""The sessions list (live), and creating a session."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from litestar import get, post
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Redirect, ServerSentEvent, Template

from api.context import Service
from api.controllers.common import current_row
from api.dashboard.live import ViewChanges, stream
from api.dashboard.present import FILTERS, ListPage, list_page
from api.dashboard.security import DASHBOARD, SKIP_SESSION, sign_in_left
from api.dashboard.templating import fragment
from api.dashboard.web import DashboardController, DashRequest, flash, page, see_other
from api.writes import Writes, call
from application.sessions import SessionsApplication
from domain.errors import InvalidValue
from domain.values import ADMIN_ACTOR, MAX_NAME_LENGTH
from projections.readmodels import ReadModels
from projections.status import SessionRow

Filter = Annotated[str, QueryParameter(name="status", pattern="^(" + "|".join(FILTERS) + ")$")]
PageNumber = Annotated[int, QueryParameter(name="page", ge=1, le=100_000)]


class RenderedLists:
    """The list's table as last rendered, per filter and page, while nothing has changed.

    Every open list page re-renders its table on every change of the views, and every load of
    the page renders it too: with many operators (or a reload storm) on 1,000 sessions, that
    is the same 7 ms of work again and again. The key is what the table shows: the rows' count
    and newest position (any change of a row moves it), the filter, the page, and the second
    (the uptime column moves with time).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._tables: dict[tuple[int, int, str, int, int], tuple[ListPage, str]] = {}

    def table(self, rows: list[SessionRow], wanted: str, number: int) -> tuple[ListPage, str]:
        now = datetime.now(UTC)
        newest = max((row.position for row in rows), default=0)
        key = (len(rows), newest, wanted, number, int(now.timestamp()))
        found = self._tables.get(key)
        if found is None:
            listing = list_page(rows, wanted, number, now)
            found = (listing, fragment("_sessions.html", listing=listing))
            if len(self._tables) >= self.size:
                self._tables.clear()  # they are all a second old at most: start again
            self._tables[key] = found
        return found


#: The list's table as the query asks for it (filter and page), rendered when called.
Table = Callable[[], tuple[ListPage, str]]


def provide_table(
    read_models: Service[ReadModels],
    lists: Service[RenderedLists],
    wanted: Filter = "all",
    number: PageNumber = 1,
) -> Table:
    """The table of the sessions this process's views have, as the query asks for it."""

    def table() -> tuple[ListPage, str]:
        return lists.table(read_models.sessions(), wanted, number)

    return table


class ListController(DashboardController):
    dependencies = {"table": Provide(provide_table, sync_to_thread=False)}  # noqa: RUF012

    @get("/")
    async def sessions(self, request: DashRequest, table: NamedDependency[Table]) -> Template:
        """Every session with its state, last activity, queue and uptime; filtered by state."""
        listing, html = table()
        return page(request, "list.html", listing=listing, table=html)

    @get("/live/sessions", opt={SKIP_SESSION: True})
    async def live_sessions(
        self,
        request: DashRequest,
        table: NamedDependency[Table],
        view_changes: Service[ViewChanges],
    ) -> ServerSentEvent:
        """The list's table, sent again whenever it changes."""

        async def render() -> dict[str, str]:
            return {"sessions-table": table()[1]}

        return stream(view_changes, render, await sign_in_left(request))

    @get("/sessions/new")
    async def new_session(self, request: DashRequest) -> Template:
        """The form that names a new session."""
        return page(request, "new.html", name="", error=None, max_name=MAX_NAME_LENGTH)

    @post("/sessions")
    async def create_session(
        self,
        request: DashRequest,
        *,
        sessions: Service[SessionsApplication],
        read_models: Service[ReadModels],
        writes: Service[Writes],
    ) -> Template | Redirect:
        """Create the session (as the API does), then show its QR code to scan."""
        form = await request.form()
        name = str(form.get("name") or "")
        try:
            created = await call(sessions.create_session, name, {}, None, ADMIN_ACTOR)
        except InvalidValue as error:
            message = str(error)
            return page(
                request,
                "new.html",
                status=422,
                name=name,
                error=message[:1].upper() + message[1:] + ".",
                max_name=MAX_NAME_LENGTH,
            )
        key = created.first_key
        # Kept for the next page first: if the views lag (503 below), the key is still shown
        # on the session's page, not lost.
        flash(request, key={"key_id": key.key_id, "key": key.key, "label": key.label})
        await writes.settle(created.position)
        row = current_row(read_models, created.session_id)
        return see_other(f"{DASHBOARD}/sessions/{row.session_id}/link")
