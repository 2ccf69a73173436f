"""How the application meets the gateway: callbacks recorded as events, and the decision of
what a worker starts when it takes a session over (at start-up, after another worker died, or
after an operator's reconnect)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from application.errors import SessionNotFound
from application.ports import Disconnection, GatewayEvents, InboundMessage
from application.sessions import Resume, SessionsApplication
from domain.policy import IMMEDIATE_REASONS, Hearing
from domain.values import DesiredState, Status

log = logging.getLogger(__name__)


class RecordingGatewayEvents(GatewayEvents):
    """Records what the gateway reports as events of the session, naming the worker that
    reports it (`worker` gives its current id)."""

    def __init__(
        self,
        app: SessionsApplication,
        worker: Callable[[], str] = str,
        on_connected: Callable[[UUID, Hearing], None] | None = None,
    ) -> None:
        """`on_connected`: told of each recorded connection with the session's `Hearing` as
        saved (the silence watchdog's first look, without another load)."""
        self.app = app
        self.worker = worker
        self.on_connected = on_connected

    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        return self.app.record_qr(session_id, code, expires_at, attempt, max_attempts)

    def qr_exhausted(self, session_id: UUID) -> int | None:
        return self.app.record_qr_expired(session_id)

    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        told = self.on_connected
        heard = None if told is None else (lambda hearing: told(session_id, hearing))
        return self.app.record_connected(session_id, jid, push_name, self.worker(), heard)

    def disconnected(self, session_id: UUID, disconnection: Disconnection) -> int | None:
        d = disconnection
        return self.app.record_disconnected(
            session_id, d.reason, d.detail, d.not_before, self.worker()
        )

    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        return self.app.record_keepalive(session_id, healthy)

    def message_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        return self.app.record_received(session_id, message)

    def message_status(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        return self.app.record_acks(session_id, whatsapp_ids, status, at)


def plan_start(
    app: SessionsApplication, session_id: UUID, takeover_reason: str, worker: str = ""
) -> Resume | None:
    """What a worker that has just taken `session_id` over must start, decided from the
    session's recorded state (never from a view, which may lag):

    - not meant to be running (stopped, deleted): nothing;
    - connecting (new, reconnect asked, pairing or resuming when the last owner went away):
      start it, resuming its device if it has one;
    - recorded as connected: it is not, since no client runs it here, so that is recorded as
      a disconnection for `takeover_reason` (``service_restarted`` / ``gateway_lost``), and
      it is resumed at once;
    - disconnected with a retry due: the retry deadline starts it; if it was disconnected
      because its holder went away or handed it over, it is resumed now;
    - expired, logged out, replaced, outdated: nothing until an operator reconnects.
    """
    try:
        session = app.load(session_id)
    except SessionNotFound:
        return None
    if session.desired != DesiredState.RUNNING:
        return None
    if session.status == Status.CONNECTING:
        return Resume.of(session)
    if session.status == Status.CONNECTED:
        app.record_disconnected(
            session_id, takeover_reason, "no client was running it", worker=worker
        )
        return app.retry(session_id)
    if session.status == Status.DISCONNECTED and session.reason in IMMEDIATE_REASONS:
        # Resumed now, not by its retry deadline: the previous holder may have claimed that
        # one as it handed the session over (its run here then finds nothing to retry).
        return app.retry(session_id)
    return None
