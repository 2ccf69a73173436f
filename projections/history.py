"""The auditor's view of the log: every event of a session as recorded (secrets redacted),
the global log with a cursor, and a session's state as it was at an instant, rebuilt from its
events through the same projection that builds the live status view."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking

from application.sessions import SessionsApplication
from domain.values import public_session_id
from domain.webhook import WebhookEndpoint, public_webhook_id
from projections.rows import SessionRow
from projections.status import SessionStatusProjection
from projections.views import MemorySessionStatusView

REDACTED = "[redacted]"
#: Never shown: API key hashes, QR codes (they link a phone while valid), message text,
#: webhook signing secrets.
SECRET_FIELDS = frozenset({"key_hash", "code", "text", "secret"})
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


def state_as_of(app: SessionsApplication, session_id: UUID, instant: datetime) -> SessionRow | None:
    """The session's status row as it was at `instant` (None if it did not exist yet)."""
    events: Iterable[Any] = app.events.get(session_id)
    return fold(event for event in events if event.timestamp <= instant)


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
