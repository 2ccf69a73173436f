"""Routes of sessions: create, list, read, status, QR, reconnect, stop, delete, rate limit."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, JSONBody, QueryParameter

from api import reads
from api.auth import (
    API_KEY_SECURITY,
    Principal,
    SessionAccess,
    provide_access,
    provide_admin,
    provide_admin_access,
    provide_admin_of_session,
)
from api.context import GatewayCalls, Service
from api.controllers.common import current_row, encoded, problems, query_instant, request_pair_code
from api.expensive import LocalReads
from api.fastpath import EXPENSIVE, FAST_STATUS
from api.presenters import label_filter, qr_out, rate_limit, session_out, status_out
from api.problems import ProblemError
from api.qr import PNG, SVG, render
from api.schemas import (
    LABEL_FILTER_PATTERN,
    CreatedSessionOut,
    CreateSessionIn,
    KeyCreatedOut,
    LabelFilter,
    PairCodeIn,
    PairCodeOut,
    QrOut,
    RateLimitIn,
    SessionListOut,
    SessionOut,
    StatusOut,
    StatusValue,
)
from api.writes import Writes, call
from application.phones import InvalidPhone
from application.sessions import SessionsApplication
from projections.readmodels import ReadModels

SESSION = "/{session_id:str}"
JSON = "application/json"


async def _run(
    writes: Writes,
    default_requests_per_minute: int,
    access: SessionAccess,
    command: Callable[[str, str], int | None],
) -> SessionOut:
    """Run a session command, wait for the views, answer with the session as it is now."""
    position = await call(command, access.session.session_id, access.actor)
    await writes.settle(position)
    row = current_row(writes.read_models, access.session.session_id)
    return session_out(row, default_requests_per_minute)


LABEL_FILTER = Schema(type=OpenAPIType.STRING, pattern=LABEL_FILTER_PATTERN)


class SessionsController(Controller):
    path = "/sessions"
    tags = ["sessions"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {  # noqa: RUF012
        "admin": Provide(provide_admin),
        "access": Provide(provide_access),
        "admin_access": Provide(provide_admin_access),
        "admin_of_session": Provide(provide_admin_of_session),
    }

    @post(
        "/",
        status_code=201,
        responses=problems(400, 401, 403, 413, 422, 503),
        operation_id="createSession",
    )
    async def create_session(
        self,
        admin: NamedDependency[Principal],
        data: JSONBody[CreateSessionIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        default_requests_per_minute: Service[int],
    ) -> CreatedSessionOut:
        """Create a session; the answer holds its first API key, shown this once."""
        requests_per_minute = data.rate_limit.requests_per_minute if data.rate_limit else None
        proxy = data.proxy.url if data.proxy else None
        sending = data.sending.settings() if data.sending else None
        created = await call(
            partial(sessions.create_session, proxy=proxy, sending=sending),
            data.name,
            data.labels,
            requests_per_minute,
            admin.actor,
        )
        await writes.settle(created.position)
        row = current_row(writes.read_models, created.session_id)
        key = created.first_key
        return CreatedSessionOut(
            session_id=row.session_id,
            name=row.name,
            labels=row.labels,
            status=session_out(row, default_requests_per_minute).status,
            rate_limit=rate_limit(row, default_requests_per_minute),
            api_key=KeyCreatedOut(
                key_id=key.key_id, key=key.key, prefix=key.prefix, label=key.label
            ),
            proxy=created.proxy,
        )

    @get("/", responses=problems(400, 401, 403), operation_id="listSessions")
    async def list_sessions(
        self,
        admin: NamedDependency[Principal],
        *,
        sessions: Service[SessionsApplication],
        read_models: Service[ReadModels],
        default_requests_per_minute: Service[int],
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
        try:
            wanted = label_filter(label)
        except ValueError as error:
            raise ProblemError(400, "invalid-filter", str(error)) from None
        rows = [
            row
            for row in read_models.sessions()
            if not row.is_deleted
            and (status is None or row.status == status)
            and all(row.labels.get(k) == v for k, v in wanted.items())
        ]
        rows.sort(key=lambda row: (row.created_at, row.session_id))
        items = [session_out(row, default_requests_per_minute) for row in rows]
        return SessionListOut(items=items, count=len(items))

    @get(
        SESSION,
        opt={EXPENSIVE: "asOf"},  # refused early beyond the session's cap (`api.fastpath`)
        responses=problems(400, 401, 404, 429, 503),
        operation_id="getSession",
    )
    async def get_session(
        self,
        access: NamedDependency[SessionAccess],
        *,
        expensive: Service[LocalReads],
        default_requests_per_minute: Service[int],
        as_of: Annotated[
            str | None,
            QueryParameter(
                name="asOf",
                format="date-time",
                description="The session as it was at this instant (with a UTC offset), "
                "rebuilt from its events",
            ),
        ] = None,
    ) -> Response[SessionOut]:
        """One session, as it is now or as it was at `asOf`."""
        if as_of is None:
            return Response(session_out(access.session, default_requests_per_minute))
        instant = query_instant(as_of, "asOf")
        session_id = access.session.session_id
        body = await expensive.run(session_id, reads.state_as_of, session_id, instant)
        if body is None:
            raise ProblemError(
                404, "not-yet-created", f"the session did not exist yet at {instant.isoformat()}"
            )
        return encoded(body)

    @get(
        SESSION + "/status",
        opt={FAST_STATUS: True},
        responses=problems(400, 401, 404, 429, 503),
        operation_id="getSessionStatus",
    )
    async def get_status(
        self,
        request: Request[Any, Any, State],
        session_id: FromPath[str],
    ) -> StatusOut:
        """The health check: status, connectedAt, health and metrics."""
        # GET is answered by `api.fastpath` with the same check; this serves the rest.
        access = await provide_access(request, session_id)
        return status_out(access.session)

    @get(
        SESSION + "/qr",
        responses={
            **problems(400, 401, 404, 406, 409, 429, 503),
            200: ResponseSpec(
                data_container=QrOut,
                description=(
                    "The QR code to scan: JSON by default, or the image itself with "
                    "`Accept: image/png` or `Accept: image/svg+xml`"
                ),
            ),
        },
        operation_id="getSessionQr",
    )
    async def get_qr(
        self,
        request: Request[Any, Any, State],
        access: NamedDependency[SessionAccess],
    ) -> Response[Any]:
        """The QR code to scan now, while the session is connecting (JSON, PNG or SVG)."""
        qr = qr_out(access.session)
        if qr is None:
            session = access.session
            hint = f" ({session.reason})" if session.reason else ""
            raise ProblemError(
                409,
                "no-qr-code",
                f"no QR code is being shown: the session is {session.status}{hint}",
            )
        wanted = (
            request.accept.best_match([JSON, PNG, SVG]) if request.headers.get("accept") else JSON
        )
        if wanted is None:
            raise ProblemError(
                406, "not-acceptable", f"the QR code is served as {JSON}, {PNG} or {SVG}"
            )
        headers = {"Cache-Control": "no-store", "Vary": "Accept"}
        if wanted == JSON:
            return Response(qr, media_type=JSON, headers=headers)
        image = await call(render, qr.code, wanted)
        return Response(image, media_type=wanted, headers=headers)

    @post(
        SESSION + "/pair-code",
        status_code=200,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 502, 503),
        operation_id="requestPairingCode",
    )
    async def pair_code(
        self,
        access: NamedDependency[SessionAccess],
        data: JSONBody[PairCodeIn],
        *,
        gateway_calls: Service[GatewayCalls],
    ) -> PairCodeOut:
        """Link by phone number instead of a scan: the 8-character code to type on the phone
        (WhatsApp → Linked devices → Link with phone number), while QR codes are shown."""
        try:
            phone, code = await request_pair_code(gateway_calls, access.session, data.phone)
        except InvalidPhone as error:
            raise ProblemError(422, "invalid-phone", str(error)) from None
        return PairCodeOut(session_id=access.session.session_id, phone=phone, code=code)

    @post(
        SESSION + "/reconnect",
        status_code=200,
        responses=problems(400, 401, 404, 409, 429, 503),
        operation_id="reconnectSession",
    )
    async def reconnect(
        self,
        access: NamedDependency[SessionAccess],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        default_requests_per_minute: Service[int],
    ) -> SessionOut:
        """Start the session again (from disconnected, expired or stopped): its linked device
        is resumed with no new scan; a session without one (never linked, logged out, QR codes
        expired) shows new QR codes."""
        return await _run(writes, default_requests_per_minute, access, sessions.reconnect)

    @post(
        SESSION + "/stop",
        status_code=200,
        responses=problems(400, 401, 404, 409, 429, 503),
        operation_id="stopSession",
    )
    async def stop(
        self,
        access: NamedDependency[SessionAccess],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        default_requests_per_minute: Service[int],
    ) -> SessionOut:
        """Stop the session; it stays stopped until reconnected. Stopping twice is harmless."""
        return await _run(writes, default_requests_per_minute, access, sessions.stop)

    @delete(
        SESSION,
        status_code=204,
        responses=problems(400, 401, 403, 404, 409, 503),
        operation_id="deleteSession",
    )
    async def delete_session(
        self,
        admin_of_session: NamedDependency[Principal],
        session_id: FromPath[str],
        *,
        writes: Service[Writes],
    ) -> None:
        """Delete the session (admin); every one of its API keys is revoked at once. Once
        this answers, no server accepts them. Deleting a deleted session answers like the
        first delete (204 once its revocations are in force everywhere)."""
        await writes.delete_session(session_id, admin_of_session.actor)

    @put(
        SESSION + "/rate-limit",
        responses=problems(400, 401, 403, 404, 409, 413, 422, 503),
        operation_id="setSessionRateLimit",
    )
    async def set_rate_limit(
        self,
        admin_access: NamedDependency[SessionAccess],
        data: JSONBody[RateLimitIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        default_requests_per_minute: Service[int],
    ) -> SessionOut:
        """Set the session's requests per minute (admin); null goes back to the default."""
        session_id = admin_access.session.session_id
        position = await call(
            sessions.set_rate_limit, session_id, data.requests_per_minute, admin_access.actor
        )
        await writes.settle(position)
        return session_out(current_row(writes.read_models, session_id), default_requests_per_minute)
