"""How the application meets the gateway: callbacks recorded as events, events turned into
gateway calls (start, stop, log out), and the restore of running sessions at start-up."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.projection import Projection

from application.ports import GatewayEvents, WhatsAppGateway
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import DesiredState, Status

log = logging.getLogger(__name__)
SERVICE_RESTARTED = "service_restarted"


class RecordingGatewayEvents(GatewayEvents):
    """Records what the gateway reports as events of the session."""

    def __init__(self, app: SessionsApplication) -> None:
        self.app = app

    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        return self.app.record_qr(session_id, code, expires_at, attempt, max_attempts)

    def qr_exhausted(self, session_id: UUID) -> int | None:
        return self.app.record_qr_expired(session_id)

    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        return self.app.record_connected(session_id, jid, push_name)

    def disconnected(self, session_id: UUID, reason: str) -> int | None:
        return self.app.record_disconnected(session_id, reason)


class GatewayDriver(Projection[TrackingRecorder]):
    """Turns recorded decisions into gateway calls: start on create and reconnect, stop on
    stop, log out on delete. Gateway calls are idempotent, so at-least-once is enough."""

    name = "gateway_driver"
    gateway: WhatsAppGateway

    @classmethod
    def bound_to(cls, gateway: WhatsAppGateway) -> type[GatewayDriver]:
        """A driver class for `gateway` (the projection runner builds projections itself)."""
        return type("BoundGatewayDriver", (cls,), {"gateway": gateway, "name": cls.name})

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register
    def _created(self, event: Session.Created, tracking: Tracking) -> None:
        self.gateway.start(event.originator_id, None)
        self.view.insert_tracking(tracking)

    @process_event.register
    def _reconnect(self, event: Session.ReconnectRequested, tracking: Tracking) -> None:
        self.gateway.start(event.originator_id, None)
        self.view.insert_tracking(tracking)

    @process_event.register
    def _stopped(self, event: Session.Stopped, tracking: Tracking) -> None:
        self.gateway.stop(event.originator_id)
        self.view.insert_tracking(tracking)

    @process_event.register
    def _deleted(self, event: Session.Deleted, tracking: Tracking) -> None:
        self.gateway.logout(event.originator_id)
        self.view.insert_tracking(tracking)


def restore_sessions(
    app: SessionsApplication, gateway: WhatsAppGateway, session_ids: list[UUID]
) -> int:
    """Bring back the sessions that should be running after the service restarted.

    A session recorded as connected is first recorded as disconnected (the service was down,
    so it was not connected) and then resumed with its linked device, as is one still waiting
    for that resume when the service restarted again; one that was showing a QR code starts a
    new round of codes. Stopped, deleted, expired and otherwise disconnected sessions are left
    as they are. Returns how many sessions were started.
    """
    started = 0
    for session_id in session_ids:
        session = app.load(session_id)
        if session.desired != DesiredState.RUNNING:
            continue
        if session.status == Status.CONNECTED:
            jid = session.jid
            app.record_disconnected(session_id, SERVICE_RESTARTED)
            gateway.start(session_id, jid)
        elif session.status == Status.DISCONNECTED and session.reason == SERVICE_RESTARTED:
            gateway.start(session_id, session.jid)  # the service restarted again meanwhile
        elif session.status == Status.CONNECTING:
            gateway.start(session_id, None)
        else:
            continue
        started += 1
    log.info("restored %d running sessions", started)
    return started
