"""One session: linking it (QR code, or a pairing code), its page, and what the operator does
to it (reconnect, stop, delete, keys, rate limit). Each action is the application command the
JSON API runs, recorded with the actor ``admin``, and waits for the views like the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any

from litestar import get, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, ServerSentEvent, Template

from api.context import ApiContext
from api.controllers.common import request_pair_code
from api.dashboard import loaders
from api.dashboard.live import ViewChanges, stream
from api.dashboard.present import line, qr_panel, watchdog
from api.dashboard.security import DASHBOARD, SKIP_SESSION, sign_in_left
from api.dashboard.templating import fragment
from api.dashboard.web import (
    DashboardController,
    DashRequest,
    ctx_of,
    flash,
    live_row,
    page,
    see_other,
)
from api.writes import call
from application.errors import NotPairing
from application.phones import InvalidPhone
from domain.access import SCOPES, check_scopes
from domain.errors import InvalidProxy
from domain.values import ADMIN_ACTOR, MAX_REQUESTS_PER_MINUTE
from projections.history import HistoryEntry
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
#: What each scope allows, in the key form's words.
SCOPE_WORDS = {
    "status:read": "read the status, QR code, history and uptime",
    "messages:send": "send messages",
    "messages:read": "read messages",
    "session:control": "reconnect, stop, pair and set the proxy",
    "keys:manage": "create, list and revoke keys",
    "webhooks:manage": "manage webhooks",
}


def status_regions(ctx: ApiContext, row: SessionRow, view: str) -> dict[str, str]:
    """The live part of a session's pages: state, reason, health, metrics, the QR code."""
    now = datetime.now(UTC)
    html = fragment(
        "_status.html",
        s=line(row, now),
        qr=qr_panel(row, now),
        now=now,
        view=view,
        default_rpm=ctx.default_requests_per_minute,
        watch=watchdog(row, ctx.silence_after),
    )
    return {"session-status": html}


async def _posted(
    request: DashRequest, session_id: str, field: str
) -> tuple[ApiContext, SessionRow, str]:
    """The context, the session (404 if gone) and one field of the posted form, trimmed."""
    ctx = ctx_of(request)
    row = live_row(ctx, session_id)
    form = await request.form()
    return ctx, row, str(form.get(field) or "").strip()


def _path(row: SessionRow, tail: str = "") -> str:
    return f"{DASHBOARD}/sessions/{row.session_id}{tail}"


class SessionController(DashboardController):
    # -- pages ----------------------------------------------------------------------------

    def _status_page(
        self, request: DashRequest, row: SessionRow, view: str, status: int, **values: Any
    ) -> Template:
        """A page with the session's live status: its own page (``page``) or ``link``."""
        return page(
            request,
            "session.html" if view == "page" else "link.html",
            status=status,
            s=line(row, datetime.now(UTC)),
            status_html=status_regions(ctx_of(request), row, view)["session-status"],
            **values,
        )

    async def _session_page(
        self, request: DashRequest, row: SessionRow, *, status: int = 200, **errors: str
    ) -> Template:
        ctx = ctx_of(request)
        details = await call(loaders.details, ctx, row)
        return self._status_page(
            request,
            row,
            "page",
            status,
            details=details,
            default_rpm=ctx.default_requests_per_minute,
            max_rpm=MAX_REQUESTS_PER_MINUTE,
            errors=errors,
            scopes=[(scope, SCOPE_WORDS[scope]) for scope in SCOPES],
            lifetimes=[(value, words) for value, (words, _) in KEY_LIFETIMES.items()],
        )

    @get(SESSION)
    async def session(self, request: DashRequest, session_id: FromPath[str]) -> Template:
        """Status and reason, health, metrics, uptime chart, timeline, keys, rate limit,
        webhooks, and the actions."""
        return await self._session_page(request, live_row(ctx_of(request), session_id))

    async def _link_page(
        self, request: DashRequest, row: SessionRow, *, status: int = 200, error: str | None = None
    ) -> Template:
        return self._status_page(request, row, "link", status, phone_error=error)

    @get(SESSION + "/link")
    async def link(self, request: DashRequest, session_id: FromPath[str]) -> Template:
        """The QR code to scan, large, replaced live; or a pairing code by phone number."""
        return await self._link_page(request, live_row(ctx_of(request), session_id))

    @get("/live" + SESSION, opt={SKIP_SESSION: True})
    async def live_session(
        self, request: DashRequest, session_id: FromPath[str], view: View = "page"
    ) -> ServerSentEvent:
        """The session's live regions (and, on its page, the timeline), sent when they change."""
        ctx = ctx_of(request)
        live_row(ctx, session_id)
        changes: ViewChanges = request.app.state.dashboard_changes
        known: dict[str, Any] = {"version": -1, "html": ""}

        async def render() -> dict[str, str] | None:
            row = ctx.read_models.session(session_id)
            if row is None or row.is_deleted:
                return None
            regions = status_regions(ctx, row, view)
            if view == "page":
                if row.version != known["version"]:  # read the events only when there are new
                    entries: list[HistoryEntry] = await call(loaders.timeline, ctx, row)
                    known.update(
                        version=row.version, html=fragment("_timeline.html", timeline=entries)
                    )
                regions["session-timeline"] = known["html"]
            return regions

        return stream(changes, render, await sign_in_left(request))

    # -- linking by phone number ----------------------------------------------------------

    @post(SESSION + "/pair-code")
    async def pair_code(
        self, request: DashRequest, session_id: FromPath[str]
    ) -> Template | Redirect:
        """Ask the session's worker for a code to type on the phone (instead of scanning)."""
        ctx, row, raw = await _posted(request, session_id, "phone")
        try:
            phone, code = await request_pair_code(ctx.gateway_calls, row, raw)
        except InvalidPhone as error:
            return await self._link_page(request, row, status=422, error=str(error))
        except NotPairing as error:
            return await self._link_page(request, row, status=409, error=str(error))
        flash(request, pair={"phone": "+" + phone, "code": code})
        return see_other(_path(row, "/link"))

    # -- actions --------------------------------------------------------------------------

    async def _command(
        self,
        request: DashRequest,
        session_id: FromPath[str],
        command: Callable[[ApiContext], Callable[[str, str], int | None]],
        notice: str,
    ) -> Redirect:
        ctx = ctx_of(request)
        row = live_row(ctx, session_id)
        position = await call(command(ctx), row.session_id, ADMIN_ACTOR)
        await ctx.writes.settle(position)
        flash(request, notice=notice)
        return see_other(_path(row))

    @post(SESSION + "/reconnect")
    async def reconnect(self, request: DashRequest, session_id: FromPath[str]) -> Redirect:
        """Start the session again: its linked device is resumed, or new QR codes are shown."""
        return await self._command(
            request, session_id, lambda ctx: ctx.app.reconnect, "Reconnecting the session."
        )

    @post(SESSION + "/stop")
    async def stop(self, request: DashRequest, session_id: FromPath[str]) -> Redirect:
        """Stop the session; it stays stopped until reconnected."""
        return await self._command(
            request, session_id, lambda ctx: ctx.app.stop, "The session is stopped."
        )

    @get(SESSION + "/delete")
    async def confirm_delete(self, request: DashRequest, session_id: FromPath[str]) -> Template:
        """Ask first: deleting revokes every API key of the session."""
        ctx = ctx_of(request)
        row = live_row(ctx, session_id)
        keys = await call(loaders.keys, ctx, row.session_id)
        now = datetime.now(UTC)
        active = sum(1 for key in keys if key.is_usable_at(now))
        return page(request, "delete.html", s=line(row, datetime.now(UTC)), active_keys=active)

    @post(SESSION + "/delete")
    async def delete(self, request: DashRequest, session_id: FromPath[str]) -> Redirect:
        """Delete the session; once this answers, no server accepts any of its keys."""
        ctx = ctx_of(request)
        row = live_row(ctx, session_id)
        await ctx.writes.delete_session(row.session_id, ADMIN_ACTOR)
        flash(request, notice=f"Session “{row.name}” deleted; all its API keys are revoked.")
        return see_other(DASHBOARD + "/")

    # -- keys and rate limit --------------------------------------------------------------

    @post(SESSION + "/keys")
    async def create_key(
        self, request: DashRequest, session_id: FromPath[str]
    ) -> Template | Redirect:
        """A new key for the session, shown on the next page only: with the scopes ticked
        (none: full access) and the expiry chosen (never, or a time to live)."""
        ctx, row, label = await _posted(request, session_id, "label")
        form = await request.form()
        label = label or "default"
        if len(label) > MAX_KEY_LABEL or not label.isprintable():
            error = f"A key's label is 1 to {MAX_KEY_LABEL} printable characters."
            return await self._session_page(request, row, status=422, key_label=error)
        scopes = [str(scope) for scope in form.getall("scopes", [])]
        if any(scope not in SCOPES for scope in scopes):
            error = f"A key's scopes are among {', '.join(SCOPES)}."
            return await self._session_page(request, row, status=422, key_scopes=error)
        lifetime = KEY_LIFETIMES.get(str(form.get("expires") or "never"))
        if lifetime is None:
            error = "Choose when the key expires from the list."
            return await self._session_page(request, row, status=422, key_expires=error)
        ttl = lifetime[1]
        issued = await call(
            partial(
                ctx.app.issue_key,
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
        await ctx.writes.settle(issued.position)
        return see_other(_path(row, "#keys"))

    @post(SESSION + "/keys/{key_id:str}/revoke")
    async def revoke_key(
        self, request: DashRequest, session_id: FromPath[str], key_id: FromPath[str]
    ) -> Redirect:
        """Revoke one key; once this answers, no server accepts it."""
        ctx = ctx_of(request)
        row = live_row(ctx, session_id)
        await ctx.writes.revoke_key(row.session_id, key_id, ADMIN_ACTOR)
        flash(request, notice=f"Key {key_id} revoked.")
        return see_other(_path(row, "#keys"))

    @post(SESSION + "/proxy")
    async def proxy(self, request: DashRequest, session_id: FromPath[str]) -> Template | Redirect:
        """Set the session's proxy (from its next connect on); empty removes it."""
        ctx, row, raw = await _posted(request, session_id, "url")
        try:
            if raw:
                position = await call(ctx.app.set_proxy, row.session_id, raw, ADMIN_ACTOR)
            else:
                position = await call(ctx.app.clear_proxy, row.session_id, ADMIN_ACTOR)
        except InvalidProxy as error:
            return await self._session_page(request, row, status=422, proxy=str(error))
        await ctx.writes.settle(position)
        flash(request, notice="Proxy saved." if raw else "Proxy removed.")
        return see_other(_path(row, "#proxy"))

    @post(SESSION + "/rate-limit")
    async def rate_limit(
        self, request: DashRequest, session_id: FromPath[str]
    ) -> Template | Redirect:
        """Set the session's requests per minute; empty goes back to the default."""
        ctx, row, raw = await _posted(request, session_id, "requests_per_minute")
        value: int | None = None
        if raw:
            value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0
            if not 1 <= value <= MAX_REQUESTS_PER_MINUTE:
                error = (
                    f"Enter a whole number from 1 to {MAX_REQUESTS_PER_MINUTE:,}, "
                    "or leave it empty for the default."
                )
                return await self._session_page(request, row, status=422, rate_limit=error)
        position = await call(ctx.app.set_rate_limit, row.session_id, value, ADMIN_ACTOR)
        await ctx.writes.settle(position)
        flash(request, notice="Rate limit saved.")
        return see_other(_path(row, "#rate-limit"))
