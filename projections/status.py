"""The session status projection: status, reason, QR code, connection times and uptime."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from domain.session import Session
from domain.values import DesiredState, Reason, Status, public_session_id
from projections.rows import UPTIME_DAYS, SessionRow
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
        count_reconnect: bool = False,
        count: dict[str, int] | None = None,
        **changes: Any,
    ) -> None:
        row = self.view.get_session(public_session_id(event.originator_id))
        if row is None:  # pragma: no cover - a Created event always comes first
            self.view.insert_tracking(tracking)
            return
        row = _advance_uptime(row, event.timestamp)
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


_RUNNING = DesiredState.RUNNING.value
_CONNECTED = Status.CONNECTED.value


def _advance_uptime(row: SessionRow, until: datetime) -> SessionRow:
    """Add the interval since the last transition to the uptime accumulators.

    It runs for most events (and for every event of a rebuild), so it copies only what
    changes: the day lists are replaced, never changed in place, and the old row keeps its own.
    """
    marked = row.marked_at
    if marked is None or until <= marked:
        return msgspec.structs.replace(row, marked_at=until)
    running, connected, days = row.running_seconds, row.connected_seconds, row.days
    if row.desired == _RUNNING:
        seconds = (until - marked).total_seconds()
        is_connected = row.status == _CONNECTED
        running += seconds
        if is_connected:
            connected += seconds
        days = dict(days)
        for day, day_seconds in _split_by_day(marked, until):
            day_running, day_connected = days.get(day, (0.0, 0.0))
            days[day] = [
                day_running + day_seconds,
                day_connected + day_seconds if is_connected else day_connected,
            ]
    oldest = _oldest_day(until.astimezone(UTC).date())
    if days and min(days) < oldest:
        days = {day: pair for day, pair in days.items() if day >= oldest}
    return msgspec.structs.replace(
        row, running_seconds=running, connected_seconds=connected, marked_at=until, days=days
    )


@lru_cache(maxsize=64)
def _oldest_day(today: date) -> str:
    """The first day kept in the accumulators: that of `window_start(…, UPTIME_DAYS + 1)`."""
    return (today - timedelta(days=UPTIME_DAYS)).isoformat()


def _split_by_day(start: datetime, end: datetime) -> list[tuple[str, float]]:
    """The seconds of [start, end) in each UTC day it touches."""
    cursor = start.astimezone(UTC)
    end = end.astimezone(UTC)
    if cursor.date() == end.date():  # the usual case: no midnight in between
        return [(cursor.date().isoformat(), (end - cursor).total_seconds())] if cursor < end else []
    parts = []
    while cursor < end:
        midnight = cursor.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        stop = min(midnight, end)
        parts.append((cursor.date().isoformat(), (stop - cursor).total_seconds()))
        cursor = stop
    return parts
