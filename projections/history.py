"""The auditor's view of the log: every event of a session as recorded (secrets redacted),
the global log with a cursor, and a session's state as it was at an instant, rebuilt from its
events through the same projection that builds the live status view."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking

from application.sessions import SessionsApplication
from domain.alerts import AlertBook, AlertRule, public_rule_id
from domain.values import public_session_id
from domain.webhook import WebhookEndpoint, public_webhook_id
from projections.status import MemorySessionStatusView, SessionRow, SessionStatusProjection

log = logging.getLogger(__name__)
REDACTED = "[redacted]"
#: Never shown: API key hashes, QR codes (they link a phone while valid), message text,
#: webhook signing secrets, proxy passwords.
SECRET_FIELDS = frozenset({"key_hash", "code", "text", "secret", "password"})
#: Bookkeeping every event carries; shown as its own fields, not as data.
_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


@dataclass(frozen=True)
class HistoryEntry:
    session_id: str | None  # None for an event of a webhook endpoint
    version: int
    type: str
    timestamp: datetime
    data: dict[str, Any]
    position: int | None = None
    webhook_id: str | None = None  # the endpoint, for an event of a webhook endpoint


def entry(event: Any, position: int | None = None) -> HistoryEntry:
    """An event as an auditor sees it: its type, version, time and redacted data."""
    data = {
        name: REDACTED if name in SECRET_FIELDS else value
        for name, value in vars(event).items()
        if name not in _ENVELOPE
    }
    if isinstance(event, AlertRule.Event | AlertBook.Event):
        return _alert_entry(event, data, position)
    if isinstance(event, WebhookEndpoint.Event):
        return HistoryEntry(
            session_id=None,
            webhook_id=public_webhook_id(event.originator_id),
            version=event.originator_version,
            type=f"Webhook{type(event).__name__}",
            timestamp=event.timestamp,
            data=data,
            position=position,
        )
    return HistoryEntry(
        session_id=public_session_id(event.originator_id),
        version=event.originator_version,
        type=type(event).__name__,
        timestamp=event.timestamp,
        data=data,
        position=position,
    )


#: The history's names of the alert rules' events (the rest are "AlertRule" + their name).
_ALERT_TYPES = {
    "Fired": "AlertFired",
    "Resolved": "AlertResolved",
    "Opened": "AlertBookOpened",
    "RuleAdded": "AlertBookRuleAdded",
    "RuleRemoved": "AlertBookRuleRemoved",
}


def _alert_entry(event: Any, data: dict[str, Any], position: int | None) -> HistoryEntry:
    """An alert rule's event: about the session it names (a firing, a resolving), if any."""
    name = type(event).__name__
    if isinstance(event, AlertRule.Event):
        data = {"rule_id": public_rule_id(event.originator_id), **data}
    return HistoryEntry(
        session_id=data.get("session_id"),
        version=event.originator_version,
        type=_ALERT_TYPES.get(name, f"AlertRule{name}"),
        timestamp=event.timestamp,
        data=data,
        position=position,
    )


def session_history(
    app: SessionsApplication, session_id: UUID, after_version: int, limit: int
) -> list[HistoryEntry]:
    """The session's events after `after_version`, oldest first, at most `limit`."""
    events = app.events.get(session_id, gt=after_version or None, limit=limit)
    return [entry(event) for event in events]


def log_page(app: SessionsApplication, after: int, limit: int) -> list[HistoryEntry]:
    """The global log after position `after`, at most `limit` events, with their positions."""
    notifications = app.recorder.select_notifications(start=after + 1, limit=limit)
    return [entry(app.mapper.to_domain_event(n), n.id) for n in notifications]


#: A snapshot of a session's status row is kept every this many versions of the session:
#: a past state is rebuilt from the nearest one, decoding at most this many events.
SNAPSHOT_EVERY = 100
#: How the status projection builds a row; bump it when that changes, so that snapshots
#: taken by an older projection are no longer used.
SNAPSHOT_FORMAT = 1


class StatusSnapshots(ABC):
    """Status rows of sessions as they were at some of their versions (see `state_as_of`)."""

    @abstractmethod
    def nearest(self, session_id: UUID, instant: datetime) -> tuple[int, SessionRow] | None:
        """The latest snapshot of the session taken at or before `instant`: its version and
        row, or None."""

    @abstractmethod
    def put(self, session_id: UUID, snapshots: list[tuple[int, datetime, SessionRow]]) -> None:
        """Keep these snapshots (version, time of that version's event, row); one already
        kept is left as it is."""


class MemoryStatusSnapshots(StatusSnapshots):
    def __init__(self) -> None:
        self._rows: dict[UUID, dict[int, tuple[datetime, SessionRow]]] = {}
        self._lock = threading.Lock()

    def nearest(self, session_id: UUID, instant: datetime) -> tuple[int, SessionRow] | None:
        with self._lock:
            kept = self._rows.get(session_id, {})
            found = [(v, row) for v, (at, row) in kept.items() if at <= instant]
        return max(found, key=lambda item: item[0]) if found else None

    def put(self, session_id: UUID, snapshots: list[tuple[int, datetime, SessionRow]]) -> None:
        with self._lock:
            kept = self._rows.setdefault(session_id, {})
            for version, at, row in snapshots:
                kept.setdefault(version, (at, row))


@dataclass
class PastState:
    """A session's row at an instant, and what rebuilding it cost."""

    row: SessionRow | None
    decoded: int  # events read and applied after the snapshot it started from
    from_version: int  # the snapshot's version (0: from the first event)


def state_as_of(
    app: SessionsApplication,
    session_id: UUID,
    instant: datetime,
    snapshots: StatusSnapshots | None = None,
) -> SessionRow | None:
    """The session's status row as it was at `instant` (None if it did not exist yet)."""
    return past_state(app, session_id, instant, snapshots).row


def past_state(
    app: SessionsApplication,
    session_id: UUID,
    instant: datetime,
    snapshots: StatusSnapshots | None = None,
) -> PastState:
    """Rebuild the row at `instant` from the nearest snapshot at or before it, reading the
    session's events after it in pages of `SNAPSHOT_EVERY` and stopping at the first one
    after `instant`: the cost depends on the events up to `instant` (one page past it at most
    is read), never on how many came after. The snapshots
    the rebuild passes that are not kept yet are kept for the next reads."""
    view = MemorySessionStatusView()
    projection = SessionStatusProjection(view=view)
    public_id = public_session_id(session_id)
    start = snapshots.nearest(session_id, instant) if snapshots is not None else None
    version = 0
    if start is not None:
        version, row = start
        view.save_session(row, Tracking("as-of", version))
    from_version, decoded = version, 0
    taken: list[tuple[int, datetime, SessionRow]] = []
    while True:
        page: list[Any] = list(app.events.get(session_id, gt=version or None, limit=SNAPSHOT_EVERY))
        for event in page:
            if event.timestamp > instant:
                page = []  # nothing after `instant` is read further
                break
            version = event.originator_version
            projection.process_event(event, Tracking("as-of", version))
            decoded += 1
            if version % SNAPSHOT_EVERY == 0:
                snapshot = view.get_session(public_id)
                if snapshot is not None:
                    taken.append((version, event.timestamp, snapshot))
        if len(page) < SNAPSHOT_EVERY:
            break
    if taken and snapshots is not None:
        try:
            snapshots.put(session_id, taken)
        except Exception:  # a snapshot is only a shortcut: the answer stands without it
            log.exception("could not keep %d status snapshots of %s", len(taken), public_id)
    return PastState(view.get_session(public_id), decoded, from_version)


def fold(events: Iterable[Any]) -> SessionRow | None:
    """Apply `events` (one session's, in order) to an empty status view; its row."""
    projection = SessionStatusProjection(view=MemorySessionStatusView())
    session_id = None
    for position, event in enumerate(events, start=1):
        session_id = public_session_id(event.originator_id)
        projection.process_event(event, Tracking("as-of", position))
    return None if session_id is None else projection.view.get_session(session_id)


def first_position_at(app: SessionsApplication, instant: datetime) -> int:
    """The position of the first event recorded at or after `instant` (binary search on the
    log, whose events are in time order), or one past the end."""
    low, high = 1, (app.recorder.max_notification_id() or 0) + 1
    while low < high:
        middle = (low + high) // 2
        (found,) = app.recorder.select_notifications(start=middle, limit=1)
        event: Any = app.mapper.to_domain_event(found)
        if event.timestamp < instant:
            low = found.id + 1
        else:
            high = middle
    return low
