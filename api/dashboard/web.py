"""Helpers of the dashboard's handlers: pages with their token and flash, redirects, rows."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request
from litestar.datastructures import State
from litestar.response import Redirect, Template

from api.dashboard.bell import BELL_STATE
from api.dashboard.security import DASHBOARD, PAGE_HEADERS, csrf_token
from api.problems import ProblemError
from domain.values import is_session_id
from projections.readmodels import ReadModels
from projections.status import SessionRow

DashRequest = Request[Any, Any, State]


class DashboardController(Controller):
    """Base of the operator's pages: under the dashboard's path, and not in the API's
    OpenAPI document."""

    path = DASHBOARD
    include_in_schema = False


def page(request: DashRequest, template: str, *, status: int = 200, **values: Any) -> Template:
    """A full page: every one carries the CSRF token for its forms, and shows (once) what the
    last action left in the flash."""
    flash = request.session.pop("flash", None) if request.scope.get("session") else None
    return Template(
        template_name=template,
        context={
            "csrf_token": csrf_token(request),
            "flash": flash or {},
            "path": request.url.path,
            "bell": request.app.state.get(BELL_STATE),
            **values,
        },
        status_code=status,
        headers=PAGE_HEADERS,
    )


def flash(request: DashRequest, **values: Any) -> None:
    """Something to show on the next page only (a new key, a pairing code, a notice)."""
    request.session["flash"] = {**request.session.get("flash", {}), **values}


def see_other(path: str) -> Redirect:
    """After a form: go to a page with GET (refreshing it does not post the form again)."""
    return Redirect(path=path, status_code=303)


def live_row(read_models: ReadModels, session_id: str) -> SessionRow:
    """The session as this process's views have it; 404 if unknown or deleted."""
    row = read_models.session(session_id) if is_session_id(session_id) else None
    if row is None or row.is_deleted:
        raise ProblemError(404, "session-not-found", f"there is no session {session_id}")
    return row
