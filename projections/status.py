"""The session status projection: status, reason, QR code, connection times and uptime."""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from domain.session import Session
from domain.values import DesiredState, Reason, Status, public_session_id
from projections.rows import SessionRow
from projections.uptime import advance, first_linked
from projections.views import SessionStatusView


class SessionStatusProjection(Projection[SessionStatusView]):
    """Builds one `SessionRow` per session from its events."""

    name = "session_status"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register
    def _created(self, event: Session.Created, tracking: Tracking) -> None:
        row = SessionRow(
            session_id=public_session_id(event.originator_id),
            name=event.name,
            labels=dict(event.labels),
            status=Status.CONNECTING.value,
            created_at=event.timestamp,
            updated_at=event.timestamp,
            requests_per_minute=event.requests_per_minute,
            marked_at=event.timestamp,
            version=event.originator_version,
            position=tracking.notification_id,
        )
        self.view.save_session(row, tracking)

    @process_event.register
    def _qr_issued(self, event: Session.QRIssued, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            qr_code=event.code,
            qr_expires_at=event.expires_at,
            qr_attempt=event.attempt,
            qr_max_attempts=event.max_attempts,
        )

    @process_event.register
    def _connected(self, event: Session.Connected, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            link=True,
            status=Status.CONNECTED.value,
            reason=None,
            connected_at=event.timestamp,
            jid=event.jid,
            push_name=event.push_name,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _disconnected(self, event: Session.Disconnected, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.DISCONNECTED.value,
            reason=event.reason,
            detail=event.detail or None,
            retry_attempt=event.attempt,
            next_retry_at=event.next_retry_at,
            degraded=False,
            connected_at=None,
            **_NO_QR,
        )

    @process_event.register
    def _attempted(self, event: Session.ReconnectAttempted, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.CONNECTING.value,
            next_retry_at=None,
            count_reconnect=True,
            **_NO_QR,
        )

    @process_event.register
    def _keepalive_lost(self, event: Session.KeepAliveLost, tracking: Tracking) -> None:
        self._update(event, tracking, degraded=True)

    @process_event.register
    def _keepalive_restored(self, event: Session.KeepAliveRestored, tracking: Tracking) -> None:
        self._update(event, tracking, degraded=False)

    @process_event.register
    def _qr_expired(self, event: Session.QRExpired, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.EXPIRED.value,
            reason=Reason.QR_EXPIRED.value,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _reconnect(self, event: Session.ReconnectRequested, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.CONNECTING.value,
            reason=None,
            desired=DesiredState.RUNNING.value,
            connected_at=None,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _stopped(self, event: Session.Stopped, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.DISCONNECTED.value,
            reason=Reason.STOPPED.value,
            desired=DesiredState.STOPPED.value,
            connected_at=None,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _deleted(self, event: Session.Deleted, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.DISCONNECTED.value,
            reason=Reason.DELETED.value,
            desired=DesiredState.DELETED.value,
            connected_at=None,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _rate_limit(self, event: Session.RateLimitSet, tracking: Tracking) -> None:
        self._update(event, tracking, requests_per_minute=event.requests_per_minute)

    @process_event.register
    def _message_queued(self, event: Session.MessageQueued, tracking: Tracking) -> None:
        self._update(event, tracking, count={"queue_depth": 1})

    @process_event.register
    def _message_sent(self, event: Session.MessageSent, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            last_activity_at=event.timestamp,
            count={"queue_depth": -1, "messages_sent": 1},
        )

    @process_event.register
    def _message_failed(self, event: Session.MessageFailed, tracking: Tracking) -> None:
        self._update(event, tracking, count={"queue_depth": -1, "messages_failed": 1})

    @process_event.register
    def _message_delivered(self, event: Session.MessageDelivered, tracking: Tracking) -> None:
        self._update(event, tracking, count={"messages_delivered": 1})

    @process_event.register
    def _message_read(self, event: Session.MessageRead, tracking: Tracking) -> None:
        self._update(event, tracking, count={"messages_read": 1})

    @process_event.register
    def _message_received(self, event: Session.MessageReceived, tracking: Tracking) -> None:
        self._update(
            event, tracking, last_activity_at=event.timestamp, count={"messages_received": 1}
        )

    def _update(
        self,
        event: Session.Event,
        tracking: Tracking,
        *,
        link: bool = False,
        count_reconnect: bool = False,
        count: dict[str, int] | None = None,
        **changes: Any,
    ) -> None:
        row = self.view.get_session(public_session_id(event.originator_id))
        if row is None:  # pragma: no cover - a Created event always comes first
            self.view.insert_tracking(tracking)
            return
        row = advance(row, event.timestamp)
        if link:
            changes.update(first_linked(row, event.timestamp))
        if count_reconnect:
            changes["reconnects"] = row.reconnects + 1
        for counter, step in (count or {}).items():
            changes[counter] = getattr(row, counter) + step
        row = msgspec.structs.replace(
            row,
            updated_at=event.timestamp,
            version=event.originator_version,
            position=tracking.notification_id,
            **changes,
        )
        self.view.save_session(row, tracking)


_NO_RETRY: dict[str, Any] = {
    "detail": None,
    "retry_attempt": 0,
    "next_retry_at": None,
    "degraded": False,
}
_NO_QR: dict[str, Any] = {
    "qr_code": None,
    "qr_expires_at": None,
    "qr_attempt": 0,
    "qr_max_attempts": 0,
}
