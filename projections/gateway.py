"""The gateway projection: what each session's client should be doing, and its deadlines.

Workers do not read events: they reconcile their clients with this view. One row per session
holds its desired state (running / stopped / deleted), a generation that an operator's
(re)start bumps, and the device JID to resume. Durable deadlines (a retry after a failure,
the safety net for an expired QR code, the logout of a deleted session) are rows written in
the same transaction as the tracking record, so each is scheduled exactly once; workers claim
them when due (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from domain.policy import ReconnectPolicy
from domain.session import Session
from domain.values import DeadlineKind, DesiredState

#: How long after a QR code's expiry, with no news from the gateway, the session is expired.
QR_GRACE = timedelta(seconds=15)
#: How long a start may go without a QR code, a connection or a failure before the worker
#: gives up on it and lets the reconnect policy try again (a start that failed or hung).
START_TIMEOUT = timedelta(seconds=60)
_STARTED = (DeadlineKind.QR_EXPIRY, DeadlineKind.START_CHECK)
_UNSET: Any = object()


@dataclass(frozen=True)
class Deadline:
    session_id: UUID
    kind: str
    due_at: datetime
    token: int  # the position of the event that set it: a claim deletes only what it saw
    claims: int = 0  # how many times a worker claimed it (a failing one is given up)


@dataclass
class GatewayRow:
    session_id: UUID
    desired: str
    generation: int
    jid: str | None
    position: int
    queued: int = 0  # outbound messages waiting


@dataclass
class GatewayChange:
    """What one event changes in the view."""

    desired: str | None = None
    bump: bool = False
    jid: Any = _UNSET  # str | None when set
    set_deadlines: dict[str, datetime] = field(default_factory=dict)
    clear_deadlines: tuple[str, ...] = ()
    queued: int = 0  # change in the number of messages waiting
    send_at: datetime | None = None  # set the send deadline then, if messages wait


def _started(event: Session.Event, **more: Any) -> GatewayChange:
    """The session is to run (again): a new generation of its client, which must report its
    start within `START_TIMEOUT` of the event."""
    return GatewayChange(
        desired=DesiredState.RUNNING.value,
        bump=True,
        set_deadlines={DeadlineKind.START_CHECK: event.timestamp + START_TIMEOUT},
        **more,
    )


class GatewayView(TrackingRecorder, ABC):
    @abstractmethod
    def apply(self, session_id: UUID, change: GatewayChange, tracking: Tracking) -> None:
        """Apply `change` to the session's row and deadlines, with the tracking record."""

    @abstractmethod
    def row(self, session_id: UUID) -> GatewayRow | None:
        """The session's row."""

    @abstractmethod
    def deadlines(self, session_id: UUID) -> list[Deadline]:
        """The session's pending deadlines."""


class GatewayProjection(Projection[GatewayView]):
    name = "gateway"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    def _apply(self, event: Session.Event, change: GatewayChange, tracking: Tracking) -> None:
        self.view.apply(event.originator_id, change, tracking)

    @process_event.register
    def _created(self, event: Session.Created, tracking: Tracking) -> None:
        self._apply(event, _started(event, jid=None), tracking)

    @process_event.register
    def _imported(self, event: Session.SessionImported, tracking: Tracking) -> None:
        # Resumed from its first start: no QR code.
        self._apply(event, _started(event, jid=event.jid), tracking)

    @process_event.register
    def _qr_issued(self, event: Session.QRIssued, tracking: Tracking) -> None:
        change = GatewayChange(
            set_deadlines={DeadlineKind.QR_EXPIRY: event.expires_at + QR_GRACE},
            clear_deadlines=(DeadlineKind.START_CHECK,),
        )
        self._apply(event, change, tracking)

    @process_event.register
    def _connected(self, event: Session.Connected, tracking: Tracking) -> None:
        change = GatewayChange(
            jid=event.jid, clear_deadlines=(DeadlineKind.RETRY, *_STARTED), send_at=event.timestamp
        )
        self._apply(event, change, tracking)

    @process_event.register
    def _message_queued(self, event: Session.MessageQueued, tracking: Tracking) -> None:
        self._apply(event, GatewayChange(queued=1, send_at=event.timestamp), tracking)

    @process_event.register
    def _sending_set(self, event: Session.SendingSet, tracking: Tracking) -> None:
        # New pace or quotas: the holder looks at a waiting queue again at once.
        self._apply(event, GatewayChange(send_at=event.timestamp), tracking)

    @process_event.register
    def _message_sent(self, event: Session.MessageSent, tracking: Tracking) -> None:
        self._apply(event, GatewayChange(queued=-1), tracking)

    @process_event.register
    def _message_failed(self, event: Session.MessageFailed, tracking: Tracking) -> None:
        self._apply(event, GatewayChange(queued=-1), tracking)

    @process_event.register
    def _disconnected(self, event: Session.Disconnected, tracking: Tracking) -> None:
        change = GatewayChange(clear_deadlines=_STARTED)
        if ReconnectPolicy.needs_new_qr(event.reason):
            change.jid = None
        if event.next_retry_at is not None:
            change.set_deadlines[DeadlineKind.RETRY] = event.next_retry_at
        else:
            change.clear_deadlines = (DeadlineKind.RETRY, *_STARTED)
        self._apply(event, change, tracking)

    @process_event.register
    def _attempted(self, event: Session.ReconnectAttempted, tracking: Tracking) -> None:
        change = GatewayChange(
            clear_deadlines=(DeadlineKind.RETRY,),
            set_deadlines={DeadlineKind.START_CHECK: event.timestamp + START_TIMEOUT},
        )
        self._apply(event, change, tracking)

    @process_event.register
    def _qr_expired(self, event: Session.QRExpired, tracking: Tracking) -> None:
        change = GatewayChange(jid=None, clear_deadlines=(DeadlineKind.RETRY, *_STARTED))
        self._apply(event, change, tracking)

    @process_event.register
    def _reconnect(self, event: Session.ReconnectRequested, tracking: Tracking) -> None:
        started = _started(event, clear_deadlines=(DeadlineKind.RETRY, DeadlineKind.QR_EXPIRY))
        self._apply(event, started, tracking)

    @process_event.register
    def _stopped(self, event: Session.Stopped, tracking: Tracking) -> None:
        change = GatewayChange(
            desired=DesiredState.STOPPED.value, clear_deadlines=(DeadlineKind.RETRY, *_STARTED)
        )
        self._apply(event, change, tracking)

    @process_event.register
    def _exported(self, event: Session.SessionExported, tracking: Tracking) -> None:
        change = GatewayChange(
            desired=DesiredState.STOPPED.value, clear_deadlines=(DeadlineKind.RETRY, *_STARTED)
        )
        self._apply(event, change, tracking)

    @process_event.register
    def _deleted(self, event: Session.Deleted, tracking: Tracking) -> None:
        change = GatewayChange(
            desired=DesiredState.DELETED.value,
            clear_deadlines=(DeadlineKind.RETRY, DeadlineKind.SEND, *_STARTED),
            set_deadlines={DeadlineKind.LOGOUT: event.timestamp},
        )
        self._apply(event, change, tracking)


class MemoryGatewayView(POPOTrackingRecorder, GatewayView):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[UUID, GatewayRow] = {}
        self._deadlines: dict[tuple[UUID, str], Deadline] = {}
        self._lock = threading.Lock()

    def apply(self, session_id: UUID, change: GatewayChange, tracking: Tracking) -> None:
        with self._lock:
            row = self._rows.get(session_id) or GatewayRow(session_id, "running", 0, None, 0)
            if change.desired is not None:
                row.desired = change.desired
            if change.bump:
                row.generation += 1
            if change.jid is not _UNSET:
                row.jid = change.jid
            row.position = tracking.notification_id
            row.queued += change.queued
            self._rows[session_id] = row
            for kind in change.clear_deadlines:
                self._deadlines.pop((session_id, kind), None)
            deadlines = dict(change.set_deadlines)
            if change.send_at is not None and row.queued > 0:
                deadlines[DeadlineKind.SEND] = change.send_at
            for kind, due in deadlines.items():
                self._deadlines[(session_id, kind)] = Deadline(
                    session_id, kind, due, tracking.notification_id
                )
        self.insert_tracking(tracking)

    def row(self, session_id: UUID) -> GatewayRow | None:
        with self._lock:
            return self._rows.get(session_id)

    def deadlines(self, session_id: UUID) -> list[Deadline]:
        with self._lock:
            return [d for (sid, _), d in self._deadlines.items() if sid == session_id]
