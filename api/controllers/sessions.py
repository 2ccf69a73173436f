"""Routes of sessions: create, list, read, status, QR, reconnect, stop, delete, rate limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import (
    API_KEY_SECURITY,
    Principal,
    SessionAccess,
    key_required,
    provide_access,
    provide_admin,
    provide_admin_access,
)
from api.controllers.common import call, context, current_row, problems, settle
from api.fastpath import FAST_STATUS
from api.presenters import label_filter, qr_out, rate_limit, session_out, status_out
from api.problems import ProblemError
from api.schemas import (
    LABEL_FILTER_PATTERN,
    CreatedSessionOut,
    CreateSessionIn,
    KeyCreatedOut,
    LabelFilter,
    QrOut,
    RateLimitIn,
    SessionListOut,
    SessionOut,
    StatusOut,
    StatusValue,
)

SESSION = "/{session_id:str}"


async def _run(
    request: Request[Any, Any, State],
    access: SessionAccess,
    command: Callable[[str, str], int | None],
) -> SessionOut:
    """Run a session command, wait for the views, answer with the session as it is now."""
    ctx = context(request)
    position = await call(command, access.session.session_id, access.actor)
    await settle(ctx, position)
    row = current_row(ctx, access.session.session_id)
    return session_out(row, ctx.default_requests_per_minute)


LABEL_FILTER = Schema(type=OpenAPIType.STRING, pattern=LABEL_FILTER_PATTERN)


class SessionsController(Controller):
    path = "/sessions"
    tags = ["sessions"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {  # noqa: RUF012
        "admin": Provide(provide_admin),
        "access": Provide(provide_access),
        "admin_access": Provide(provide_admin_access),
    }

    @post(
        "/",
        status_code=201,
        guards=[key_required],
        responses=problems(400, 401, 403, 413, 422, 503),
    )
    async def create_session(
        self,
        request: Request[Any, Any, State],
        admin: NamedDependency[Principal],
        data: JSONBody[CreateSessionIn],
    ) -> CreatedSessionOut:
        """Create a session; the answer holds its first API key, shown this once."""
        ctx = context(request)
        requests_per_minute = data.rate_limit.requests_per_minute if data.rate_limit else None
        created = await call(
            ctx.app.create_session, data.name, data.labels, requests_per_minute, admin.actor
        )
        await settle(ctx, created.position)
        row = current_row(ctx, created.session_id)
        key = created.first_key
        return CreatedSessionOut(
            session_id=row.session_id,
            name=row.name,
            labels=row.labels,
            status=session_out(row, ctx.default_requests_per_minute).status,
            rate_limit=rate_limit(row, ctx.default_requests_per_minute),
            api_key=KeyCreatedOut(
                key_id=key.key_id, key=key.key, prefix=key.prefix, label=key.label
            ),
        )

    @get("/", responses=problems(400, 401, 403))
    async def list_sessions(
        self,
        request: Request[Any, Any, State],
        admin: NamedDependency[Principal],
        status: Annotated[
            StatusValue | None, QueryParameter(description="Only sessions with this status")
        ] = None,
        label: Annotated[
            list[LabelFilter] | None,
            QueryParameter(
                description="Only sessions with this label, as key:value; repeatable",
                schema_extra={"one_of": None, "type": OpenAPIType.ARRAY, "items": LABEL_FILTER},
            ),
        ] = None,
    ) -> SessionListOut:
        """List sessions (admin), optionally only those with a status or labels."""
        ctx = context(request)
        try:
            wanted = label_filter(label)
        except ValueError as error:
            raise ProblemError(400, "invalid-filter", str(error)) from None
        rows = [
            row
            for row in ctx.read_models.sessions()
            if not row.is_deleted
            and (status is None or row.status == status)
            and all(row.labels.get(k) == v for k, v in wanted.items())
        ]
        rows.sort(key=lambda row: (row.created_at, row.session_id))
        items = [session_out(row, ctx.default_requests_per_minute) for row in rows]
        return SessionListOut(items=items, count=len(items))

    @get(SESSION, responses=problems(400, 401, 404, 429, 503))
    async def get_session(
        self, request: Request[Any, Any, State], access: NamedDependency[SessionAccess]
    ) -> SessionOut:
        """One session."""
        return session_out(access.session, context(request).default_requests_per_minute)

    @get(SESSION + "/status", opt={FAST_STATUS: True}, responses=problems(400, 401, 404, 429, 503))
    async def get_status(
        self, request: Request[Any, Any, State], session_id: FromPath[str]
    ) -> StatusOut:
        """The health check: status, connectedAt, health and metrics."""
        # GET is answered by `api.fastpath` with the same check; this serves the rest.
        access = await provide_access(request, session_id)
        return status_out(access.session)

    @get(SESSION + "/qr", responses=problems(400, 401, 404, 409, 429, 503))
    async def get_qr(self, access: NamedDependency[SessionAccess]) -> QrOut:
        """The QR code to scan now, while the session is connecting."""
        qr = qr_out(access.session)
        if qr is None:
            raise ProblemError(
                409,
                "no-qr-code",
                f"no QR code is being shown: the session is {access.session.status}",
            )
        return qr

    @post(SESSION + "/reconnect", status_code=200, responses=problems(400, 401, 404, 409, 429, 503))
    async def reconnect(
        self, request: Request[Any, Any, State], access: NamedDependency[SessionAccess]
    ) -> SessionOut:
        """Ask for a new QR code (from disconnected, expired or stopped)."""
        return await _run(request, access, context(request).app.reconnect)

    @post(SESSION + "/stop", status_code=200, responses=problems(400, 401, 404, 409, 429, 503))
    async def stop(
        self, request: Request[Any, Any, State], access: NamedDependency[SessionAccess]
    ) -> SessionOut:
        """Stop the session; it stays stopped until reconnected. Stopping twice is harmless."""
        return await _run(request, access, context(request).app.stop)

    @delete(SESSION, status_code=204, responses=problems(400, 401, 403, 404, 409, 503))
    async def delete_session(
        self, request: Request[Any, Any, State], admin_access: NamedDependency[SessionAccess]
    ) -> None:
        """Delete the session (admin); every one of its API keys is revoked at once."""
        ctx = context(request)
        position = await call(ctx.app.delete, admin_access.session.session_id, admin_access.actor)
        await settle(ctx, position)

    @put(
        SESSION + "/rate-limit",
        guards=[key_required],
        responses=problems(400, 401, 403, 404, 409, 413, 422, 503),
    )
    async def set_rate_limit(
        self,
        request: Request[Any, Any, State],
        admin_access: NamedDependency[SessionAccess],
        data: JSONBody[RateLimitIn],
    ) -> SessionOut:
        """Set the session's requests per minute (admin); null goes back to the default."""
        ctx = context(request)
        session_id = admin_access.session.session_id
        position = await call(
            ctx.app.set_rate_limit, session_id, data.requests_per_minute, admin_access.actor
        )
        await settle(ctx, position)
        return session_out(current_row(ctx, session_id), ctx.default_requests_per_minute)
