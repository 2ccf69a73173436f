"""One session: linking it (QR code, or a pairing code), its page, and what the operator does
to it (reconnect, stop, delete, keys, rate limit). Each action is the application command the
JSON API runs, recorded with the actor ``admin``, and waits for the views like the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any

from litestar import get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, ServerSentEvent, Template

from api.context import GatewayCalls, Service
from api.controllers.common import request_pair_code
from api.dashboard.live import ViewChanges, stream
from api.dashboard.loaders import SessionReads
from api.dashboard.present import line, qr_panel, watchdog
from api.dashboard.security import DASHBOARD, SKIP_SESSION, sign_in_left
from api.dashboard.templating import fragment
from api.dashboard.web import DashboardController, DashRequest, flash, live_row, page, see_other
from api.writes import Writes, call
from application.errors import NotPairing
from application.phones import InvalidPhone
from application.sessions import SessionsApplication
from domain.access import SCOPES, check_scopes
from domain.errors import InvalidProxy
from domain.values import ADMIN_ACTOR, MAX_REQUESTS_PER_MINUTE
from projections.history import HistoryEntry
from projections.readmodels import ReadModels
from projections.status import SessionRow

SESSION = "/sessions/{session_id:str}"
View = Annotated[str, QueryParameter(name="view", pattern="^(link|page)$")]
MAX_KEY_LABEL = 64
#: The expiries the key form offers: the value posted -> (its words, seconds to live or None
#: for never).
KEY_LIFETIMES: dict[str, tuple[str, int | None]] = {
    "never": ("Never", None),
    "1h": ("In 1 hour", 3600),
    "1d": ("In 1 day", 86400),
    "7d": ("In 7 days", 7 * 86400),
    "30d": ("In 30 days", 30 * 86400),
    "90d": ("In 90 days", 90 * 86400),
    "365d": ("In 1 year", 365 * 86400),
}
#: The commands of the session's page that take no input, by their path's last part: the
#: application's command, and the notice shown once it is done.
COMMANDS: dict[
    str, tuple[Callable[[SessionsApplication], Callable[[str, str], int | None]], str]
] = {
    "reconnect": (lambda app: app.reconnect, "Reconnecting the session."),
    "stop": (lambda app: app.stop, "The session is stopped."),
}
#: What each scope allows, in the key form's words.
SCOPE_WORDS = {
    "status:read": "read the status, QR code, history and uptime",
    "messages:send": "send messages",
    "messages:read": "read messages",
    "session:control": "reconnect, stop, pair and set the proxy",
    "keys:manage": "create, list and revoke keys",
    "webhooks:manage": "manage webhooks",
}


@dataclass(frozen=True)
class SessionPages:
    """A session's pages (its own, and the link page) and their live regions: state, reason,
    health, metrics, the QR code. Built once; the handlers receive it as ``pages``."""

    reads: SessionReads
    default_requests_per_minute: int
    silence_after: float

    def regions(self, row: SessionRow, view: str) -> dict[str, str]:
        """The live part of the page ``view`` (``page`` or ``link``)."""
        now = datetime.now(UTC)
        html = fragment(
            "_status.html",
            s=line(row, now),
            qr=qr_panel(row, now),
            now=now,
            view=view,
            default_rpm=self.default_requests_per_minute,
            watch=watchdog(row, self.silence_after),
        )
        return {"session-status": html}

    def _status_page(
        self, request: DashRequest, row: SessionRow, view: str, status: int, **values: Any
    ) -> Template:
        return page(
            request,
            "session.html" if view == "page" else "link.html",
            status=status,
            s=line(row, datetime.now(UTC)),
            status_html=self.regions(row, view)["session-status"],
            **values,
        )

    async def session_page(
        self, request: DashRequest, row: SessionRow, *, status: int = 200, **errors: str
    ) -> Template:
        """The session's own page; `errors` are the refusals of its forms, by field."""
        details = await call(self.reads.details, row)
        return self._status_page(
            request,
            row,
            "page",
            status,
            details=details,
            default_rpm=self.default_requests_per_minute,
            max_rpm=MAX_REQUESTS_PER_MINUTE,
            errors=errors,
            scopes=[(scope, SCOPE_WORDS[scope]) for scope in SCOPES],
            lifetimes=[(value, words) for value, (words, _) in KEY_LIFETIMES.items()],
        )

    def link_page(
        self, request: DashRequest, row: SessionRow, *, status: int = 200, error: str | None = None
    ) -> Template:
        """The page that links the session (QR code, or a pairing code by phone number)."""
        return self._status_page(request, row, "link", status, phone_error=error)


def provide_row(session_id: FromPath[str], read_models: Service[ReadModels]) -> SessionRow:
    """The session of the path, as this process's views have it (404 if gone)."""
    return live_row(read_models, session_id)


#: The session named by the path (`provide_row`).
Row = NamedDependency[SessionRow]
Pages = Service[SessionPages]


async def _field(request: DashRequest, name: str) -> str:
    """One field of the posted form, trimmed."""
    form = await request.form()
    return str(form.get(name) or "").strip()


def _path(row: SessionRow, tail: str = "") -> str:
    return f"{DASHBOARD}/sessions/{row.session_id}{tail}"


def _done(request: DashRequest, notice: str, to: str) -> Redirect:
    """After a command: go to `to`, which shows `notice`."""
    flash(request, notice=notice)
    return see_other(to)


@dataclass(frozen=True)
class AdminCommands:
    """The application's commands as the operator runs them (actor ``admin``), each done
    once this process's views have what it recorded. Received as ``commands``."""

    app: SessionsApplication
    writes: Writes

    async def run(self, command: Callable[..., int | None], *args: Any) -> None:
        """Run `command` with `args` as the admin; return once the views have it."""
        await self.writes.settle(await call(command, *args, ADMIN_ACTOR))


class SessionController(DashboardController):
    dependencies = {"row": Provide(provide_row, sync_to_thread=False)}  # noqa: RUF012

    # -- pages ----------------------------------------------------------------------------

    @get(SESSION)
    async def session(self, request: DashRequest, row: Row, pages: Pages) -> Template:
        """Status and reason, health, metrics, uptime chart, timeline, keys, rate limit,
        webhooks, and the actions."""
        return await pages.session_page(request, row)

    @get(SESSION + "/link")
    async def link(self, request: DashRequest, row: Row, pages: Pages) -> Template:
        """The QR code to scan, large, replaced live; or a pairing code by phone number."""
        return pages.link_page(request, row)

    @get("/live" + SESSION, opt={SKIP_SESSION: True})
    async def live_session(
        self,
        request: DashRequest,
        row: Row,
        view: View = "page",
        *,
        pages: Pages,
        view_changes: Service[ViewChanges],
    ) -> ServerSentEvent:
        """The session's live regions (and, on its page, the timeline), sent when they change."""
        session_id = row.session_id
        known: dict[str, Any] = {"version": -1, "html": ""}

        async def render() -> dict[str, str] | None:
            current = pages.reads.read_models.session(session_id)
            if current is None or current.is_deleted:
                return None
            regions = pages.regions(current, view)
            if view == "page":
                if current.version != known["version"]:  # read the events only when new
                    entries: list[HistoryEntry] = await call(pages.reads.timeline, current)
                    known.update(
                        version=current.version, html=fragment("_timeline.html", timeline=entries)
                    )
                regions["session-timeline"] = known["html"]
            return regions

        return stream(view_changes, render, await sign_in_left(request))

    # -- linking by phone number ----------------------------------------------------------

    @post(SESSION + "/pair-code")
    async def pair_code(
        self,
        request: DashRequest,
        row: Row,
        *,
        pages: Pages,
        gateway_calls: Service[GatewayCalls],
    ) -> Template | Redirect:
        """Ask the session's worker for a code to type on the phone (instead of scanning)."""
        try:
            phone, code = await request_pair_code(
                gateway_calls, row, await _field(request, "phone")
            )
        except InvalidPhone as error:
            return pages.link_page(request, row, status=422, error=str(error))
        except NotPairing as error:
            return pages.link_page(request, row, status=409, error=str(error))
        flash(request, pair={"phone": "+" + phone, "code": code})
        return see_other(_path(row, "/link"))

    # -- actions --------------------------------------------------------------------------

    @post([SESSION + "/reconnect", SESSION + "/stop"])
    async def command(
        self, request: DashRequest, row: Row, commands: Service[AdminCommands]
    ) -> Redirect:
        """Reconnect the session (its linked device is resumed, or new QR codes are shown), or
        stop it (it stays stopped until reconnected): the path's last part says which."""
        command, notice = COMMANDS[request.url.path.rsplit("/", 1)[-1]]
        await commands.run(command(commands.app), row.session_id)
        return _done(request, notice, _path(row))

    @get(SESSION + "/delete")
    async def confirm_delete(self, request: DashRequest, row: Row, pages: Pages) -> Template:
        """Ask first: deleting revokes every API key of the session."""
        keys = await call(pages.reads.keys, row.session_id)
        now = datetime.now(UTC)
        active = sum(1 for key in keys if key.is_usable_at(now))
        return page(request, "delete.html", s=line(row, datetime.now(UTC)), active_keys=active)

    @post(SESSION + "/delete")
    async def delete(self, request: DashRequest, row: Row, writes: Service[Writes]) -> Redirect:
        """Delete the session; once this answers, no server accepts any of its keys."""
        await writes.delete_session(row.session_id, ADMIN_ACTOR)
        flash(request, notice=f"Session “{row.name}” deleted; all its API keys are revoked.")
        return see_other(DASHBOARD + "/")

    # -- keys and rate limit --------------------------------------------------------------

    @post(SESSION + "/keys")
    async def create_key(
        self, request: DashRequest, row: Row, commands: Service[AdminCommands], pages: Pages
    ) -> Template | Redirect:
        """A new key for the session, shown on the next page only: with the scopes ticked
        (none: full access) and the expiry chosen (never, or a time to live)."""
        form = await request.form()
        label = str(form.get("label") or "").strip() or "default"
        if len(label) > MAX_KEY_LABEL or not label.isprintable():
            error = f"A key's label is 1 to {MAX_KEY_LABEL} printable characters."
            return await pages.session_page(request, row, status=422, key_label=error)
        scopes = [str(scope) for scope in form.getall("scopes", [])]
        if any(scope not in SCOPES for scope in scopes):
            error = f"A key's scopes are among {', '.join(SCOPES)}."
            return await pages.session_page(request, row, status=422, key_scopes=error)
        lifetime = KEY_LIFETIMES.get(str(form.get("expires") or "never"))
        if lifetime is None:
            error = "Choose when the key expires from the list."
            return await pages.session_page(request, row, status=422, key_expires=error)
        ttl = lifetime[1]
        issued = await call(
            partial(
                commands.app.issue_key,
                scopes=check_scopes(scopes) if scopes else None,
                expires_at=None if ttl is None else datetime.now(UTC) + timedelta(seconds=ttl),
            ),
            row.session_id,
            label,
            ADMIN_ACTOR,
        )
        # Kept for the next page before waiting for the views (see `create_session`).
        expires = issued.expires_at
        flash(
            request,
            key={
                "key_id": issued.key_id,
                "key": issued.key,
                "label": issued.label,
                "scopes": issued.scopes,
                "expires": None if expires is None else expires.strftime("%Y-%m-%d %H:%M:%S UTC"),
            },
        )
        await commands.writes.settle(issued.position)
        return see_other(_path(row, "#keys"))

    @post(SESSION + "/keys/{key_id:str}/revoke")
    async def revoke_key(
        self, request: DashRequest, row: Row, key_id: FromPath[str], writes: Service[Writes]
    ) -> Redirect:
        """Revoke one key; once this answers, no server accepts it."""
        await writes.revoke_key(row.session_id, key_id, ADMIN_ACTOR)
        flash(request, notice=f"Key {key_id} revoked.")
        return see_other(_path(row, "#keys"))

    @post(SESSION + "/proxy")
    async def proxy(
        self, request: DashRequest, row: Row, commands: Service[AdminCommands], pages: Pages
    ) -> Template | Redirect:
        """Set the session's proxy (from its next connect on); empty removes it."""
        raw = await _field(request, "url")
        try:
            if raw:
                await commands.run(commands.app.set_proxy, row.session_id, raw)
            else:
                await commands.run(commands.app.clear_proxy, row.session_id)
        except InvalidProxy as error:
            return await pages.session_page(request, row, status=422, proxy=str(error))
        notice = "Proxy saved." if raw else "Proxy removed."
        return _done(request, notice, _path(row, "#proxy"))

    @post(SESSION + "/rate-limit")
    async def rate_limit(
        self, request: DashRequest, row: Row, commands: Service[AdminCommands], pages: Pages
    ) -> Template | Redirect:
        """Set the session's requests per minute; empty goes back to the default."""
        raw = await _field(request, "requests_per_minute")
        value: int | None = None
        if raw:
            value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0
            if not 1 <= value <= MAX_REQUESTS_PER_MINUTE:
                error = (
                    f"Enter a whole number from 1 to {MAX_REQUESTS_PER_MINUTE:,}, "
                    "or leave it empty for the default."
                )
                return await pages.session_page(request, row, status=422, rate_limit=error)
        await commands.run(commands.app.set_rate_limit, row.session_id, value)
        return _done(request, "Rate limit saved.", _path(row, "#rate-limit"))
