"""The session status projection: status, reason, QR code, connection times and uptime."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from domain.policy import ReconnectPolicy, SilencePolicy
from domain.session import Session
from domain.values import DesiredState, Reason, Status, public_session_id
from projections.uptime import split_by_day, uptime_percent

UPTIME_DAYS = 30


def window_start(now: datetime, days: int = UPTIME_DAYS) -> datetime:
    """Midnight (UTC) that opens a window of `days` days ending with the day of `now`."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)


class SessionRow(msgspec.Struct, kw_only=True):
    """One session as the status view knows it."""

    session_id: str
    name: str
    labels: dict[str, str] = {}
    status: str
    reason: str | None = None
    detail: str | None = None
    retry_attempt: int = 0
    next_retry_at: datetime | None = None
    degraded: bool = False
    desired: str = "running"
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None = None
    jid: str | None = None
    push_name: str | None = None
    qr_code: str | None = None
    qr_expires_at: datetime | None = None
    qr_attempt: int = 0
    qr_max_attempts: int = 0
    requests_per_minute: int | None = None
    last_activity_at: datetime | None = None  # the last message sent or received
    messages_sent: int = 0
    messages_received: int = 0
    messages_delivered: int = 0  # sent messages the recipient's phone got
    messages_read: int = 0  # sent messages the recipient opened
    messages_failed: int = 0  # outbound messages that were not sent
    queue_depth: int = 0  # outbound messages waiting to be sent
    reconnects: int = 0  # tries to connect again: by the service (retries) or an operator
    # How WhatsApp restricts the session (`Session.Restricted`), until it is lifted: its
    # outbound queue is paused meanwhile.
    restriction_kind: str | None = None
    restriction_until: datetime | None = None  # a ban's end; None: until a person acts
    restriction_detail: str | None = None
    restricted_at: datetime | None = None
    # The silence watchdog (`Session.hearing`): when WhatsApp was last heard on the link, and
    # since when the session is silent (health degraded, reason "silent"), if it is.
    heard_at: datetime | None = None
    silent_since: datetime | None = None
    # Since when a session meant to run has not been connected: its first Disconnected after
    # it was connected (retries and an operator's reconnect keep it); None while connected,
    # before its first disconnection, and once stopped or deleted. `/metrics` and the alert
    # rules age it.
    down_since: datetime | None = None
    receives: bool = False  # received a message or a receipt since its device was linked
    # Uptime (see `projections.uptime`): from the first link on, seconds in service (meant
    # to be running), and of those, seconds connected, both counted up to `marked_at`; the
    # open interval since then is added when read.
    linked_at: datetime | None = None  # the first Connected
    running_seconds: float = 0.0
    connected_seconds: float = 0.0
    marked_at: datetime | None = None
    # The same two accumulators per UTC day ("YYYY-MM-DD": [running, connected] seconds),
    # for the last UPTIME_DAYS + 1 days, counted up to `marked_at`: the status's window.
    days: dict[str, list[float]] = {}
    version: int = 0
    position: int = 0

    @property
    def is_deleted(self) -> bool:
        return self.desired == "deleted"


class SessionStatusView(TrackingRecorder, ABC):
    """The status of every session, keyed by public session id."""

    @abstractmethod
    def get_session(self, session_id: str) -> SessionRow | None:
        """The row of that session, deleted ones included."""

    @abstractmethod
    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        """Write the row and the tracking record in one transaction."""

    @abstractmethod
    def all_sessions(self) -> list[SessionRow]:
        """Every row, deleted ones included."""


class MemorySessionStatusView(POPOTrackingRecorder, SessionStatusView):
    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, SessionRow] = {}
        self._rows_lock = threading.Lock()

    def get_session(self, session_id: str) -> SessionRow | None:
        return self._rows.get(session_id)

    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        with self._rows_lock:
            self.insert_tracking(tracking)
            self._rows[row.session_id] = row

    def all_sessions(self) -> list[SessionRow]:
        return list(self._rows.values())


def linked_since(row: SessionRow) -> datetime | None:
    """From when the row counts uptime: the session's first link. A row that a release before
    `linked_at` wrote for a session linked by then has its device's JID but no `linked_at`;
    its accumulators count from its creation (until the view is rebuilt from the log)."""
    if row.linked_at is not None:
        return row.linked_at
    return row.created_at if row.jid is not None else None


def in_service(row: SessionRow) -> bool:
    return row.desired == DesiredState.RUNNING and linked_since(row) is not None


def status_uptime(row: SessionRow, now: datetime, days: int = UPTIME_DAYS) -> float | None:
    """The uptime the status shows at `now`: over the current UTC day and the `days - 1` whole
    days before it (since the first link, if that is later). The same as `series` gives for
    that window, from the same events."""
    if linked_since(row) is None:
        return None
    # On the status read path: one pass over at most 32 days, and no datetime built unless
    # the open interval began before the window.
    first = (now.astimezone(UTC).date() - timedelta(days=days - 1)).isoformat()
    running = connected = 0.0
    for day, (day_running, day_connected) in row.days.items():
        if day >= first:
            running += day_running
            connected += day_connected
    marked = row.marked_at
    if marked is not None and now > marked and in_service(row):
        inside = marked.astimezone(UTC).date().isoformat() >= first
        open_seconds = (now - (marked if inside else window_start(now, days))).total_seconds()
        running += open_seconds
        if row.status == Status.CONNECTED:
            connected += open_seconds
    return uptime_percent(running, connected)


def first_linked(row: SessionRow, at: datetime) -> dict[str, Any]:
    """The changes that record a session's first link at `at` (none if it was linked before):
    from then on its time in service is counted. Accumulators a previous release counted
    before the link (the wait for the first scan) are dropped."""
    if linked_since(row) is not None:
        return {}
    return {"linked_at": at, "running_seconds": 0.0, "connected_seconds": 0.0, "days": {}}


def advance(row: SessionRow, until: datetime) -> SessionRow:
    """Add the interval since the last mark to the accumulators, if the session was in service.

    It runs for most events (and for every event of a rebuild), so it copies only what
    changes: the day lists are replaced, never changed in place, and the old row keeps its own.
    """
    marked = row.marked_at
    if marked is None or until <= marked:
        return msgspec.structs.replace(row, marked_at=until)
    running, connected, days = row.running_seconds, row.connected_seconds, row.days
    if in_service(row):
        seconds = (until - marked).total_seconds()
        is_connected = row.status == Status.CONNECTED
        running += seconds
        if is_connected:
            connected += seconds
        days = dict(days)
        for day, day_seconds in split_by_day(marked, until):
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
        if isinstance(event, Session.SessionImported):  # its device, before it connects
            row = msgspec.structs.replace(row, jid=event.jid, push_name=event.push_name or None)
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
        def heard(row: SessionRow) -> dict[str, Any]:
            # A connection after the session only changed workers keeps the silence clock.
            keeps = SilencePolicy.keeps_the_clock(row.reason)
            return {} if keeps else {"heard_at": event.timestamp}

        self._update(
            event,
            tracking,
            derive=heard,
            link=True,
            status=Status.CONNECTED.value,
            reason=None,
            connected_at=event.timestamp,
            down_since=None,
            jid=event.jid,
            push_name=event.push_name,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _disconnected(self, event: Session.Disconnected, tracking: Tracking) -> None:
        def down(row: SessionRow) -> dict[str, Any]:
            return {"down_since": row.down_since or event.timestamp}

        self._update(
            event,
            tracking,
            derive=down,
            status=Status.DISCONNECTED.value,
            reason=event.reason,
            detail=event.detail or None,
            retry_attempt=event.attempt,
            next_retry_at=event.next_retry_at,
            degraded=False,
            connected_at=None,
            **_NO_QR,
            **(_NEW_DEVICE if ReconnectPolicy.needs_new_qr(event.reason) else {}),
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
    def _restricted(self, event: Session.Restricted, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            restriction_kind=event.kind,
            restriction_until=event.until,
            restriction_detail=event.detail or None,
            restricted_at=event.timestamp,
        )

    @process_event.register
    def _restriction_lifted(self, event: Session.RestrictionLifted, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            restriction_kind=None,
            restriction_until=None,
            restriction_detail=None,
            restricted_at=None,
        )

    @process_event.register
    def _keepalive_lost(self, event: Session.KeepAliveLost, tracking: Tracking) -> None:
        self._update(event, tracking, degraded=True, silent_since=None)

    @process_event.register
    def _keepalive_restored(self, event: Session.KeepAliveRestored, tracking: Tracking) -> None:
        self._update(event, tracking, degraded=False, heard_at=event.timestamp)

    @process_event.register
    def _silenced(self, event: Session.Silenced, tracking: Tracking) -> None:
        self._update(event, tracking, silent_since=event.timestamp)

    @process_event.register
    def _silence_ended(self, event: Session.SilenceEnded, tracking: Tracking) -> None:
        self._update(event, tracking, silent_since=None, heard_at=event.timestamp)

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
            down_since=None,
            **_NO_QR,
            **_NO_RETRY,
        )

    @process_event.register
    def _exported(self, event: Session.SessionExported, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            status=Status.DISCONNECTED.value,
            reason=Reason.EXPORTED.value,
            desired=DesiredState.STOPPED.value,
            connected_at=None,
            down_since=None,
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
            down_since=None,
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
        self._update(
            event,
            tracking,
            heard_at=event.timestamp,
            receives=True,
            count={"messages_delivered": 1},
        )

    @process_event.register
    def _message_read(self, event: Session.MessageRead, tracking: Tracking) -> None:
        self._update(
            event, tracking, heard_at=event.timestamp, receives=True, count={"messages_read": 1}
        )

    @process_event.register
    def _message_received(self, event: Session.MessageReceived, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            last_activity_at=event.timestamp,
            heard_at=event.timestamp,
            receives=True,
            count={"messages_received": 1},
        )

    def _update(
        self,
        event: Session.Event,
        tracking: Tracking,
        *,
        link: bool = False,
        count_reconnect: bool = False,
        count: dict[str, int] | None = None,
        derive: Callable[[SessionRow], dict[str, Any]] | None = None,
        **changes: Any,
    ) -> None:
        row = self.view.get_session(public_session_id(event.originator_id))
        if row is None:  # pragma: no cover - a Created event always comes first
            self.view.insert_tracking(tracking)
            return
        if derive is not None:  # from the row as it was before this event
            changes.update(derive(row))
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
#: The device is gone: the next one is watched once it receives something.
_NEW_DEVICE: dict[str, Any] = {"receives": False}
_NO_QR: dict[str, Any] = {
    "qr_code": None,
    "qr_expires_at": None,
    "qr_attempt": 0,
    "qr_max_attempts": 0,
}
