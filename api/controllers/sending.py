"""Routes of a session's sending pace and quotas: read them (with where the quotas stand),
set them (admin)."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Controller, get, put
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access, provide_admin_access
from api.context import Service
from api.controllers.common import problems
from api.schemas import SENDING_NAMES, SendingIn, SendingOut
from api.writes import Writes, call
from application.sessions import SendingState, SessionsApplication

_WIRE = {domain: wire for wire, domain in SENDING_NAMES.items()}


def sending_state(app: SessionsApplication, session_id: str) -> SendingState:
    """The session's sending settings and quotas now, read from its events."""
    return app.sending_state(app.get_session(session_id), datetime.now(UTC))


def sending_out(session_id: str, state: SendingState) -> SendingOut:
    settings, quota = state.settings, state.quota
    return SendingOut(
        session_id=session_id,
        interval_seconds=settings.interval,
        jitter_seconds=settings.jitter,
        messages_per_hour=settings.per_hour,
        messages_per_day=settings.per_day,
        typing=settings.typing,
        own=[_camel(_WIRE[name]) for name in state.own],
        sent_last_hour=quota.sent_hour,
        sent_last_day=quota.sent_day,
        remaining_hour=quota.remaining_hour,
        remaining_day=quota.remaining_day,
        queued=state.queued,
        next_send_at=quota.opens_at,
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class SendingController(Controller):
    path = "/sessions/{session_id:str}/sending"
    tags = ["sessions"]  # noqa: RUF012
    security = API_KEY_SECURITY

    @get(
        "/",
        responses=problems(400, 401, 404, 429, 503),
        operation_id="getSessionSending",
        dependencies={"access": Provide(provide_access)},
    )
    async def get_sending(
        self, access: NamedDependency[SessionAccess], sessions: Service[SessionsApplication]
    ) -> SendingOut:
        """How the session sends (its pace and quotas, its own or the deployment's) and
        where its quotas stand now."""
        session_id = access.session.session_id
        state = await call(sending_state, sessions, session_id)
        return sending_out(session_id, state)

    @put(
        "/",
        responses=problems(400, 401, 403, 404, 413, 422, 503),
        operation_id="setSessionSending",
        dependencies={"admin_access": Provide(provide_admin_access)},
    )
    async def set_sending(
        self,
        admin_access: NamedDependency[SessionAccess],
        data: JSONBody[SendingIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
    ) -> SendingOut:
        """Set the session's own pace and quotas (admin), from its next message on; a field
        left out follows the deployment's default, `{}` all of them. Recorded as an event;
        the same settings again record nothing."""
        session_id = admin_access.session.session_id
        position = await call(sessions.set_sending, session_id, data.settings(), admin_access.actor)
        await writes.settle(position)
        state = await call(sending_state, sessions, session_id)
        return sending_out(session_id, state)
