"""What a webhook replay sends again: the endpoint's events of a time window, found a bounded
number at a time, with a cursor to continue.

A session's endpoint reads that session's own events only (by version, from the first one at
or after the window's start, found by a binary search: events are in time order); the admin's
endpoint, which receives every session's events, reads the log. Either way one call reads at
most `limit` events, so no replay can make the server read a whole log at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from application.sessions import SessionsApplication
from domain.values import session_uuid
from projections.history import first_position_at
from projections.webhooks import NewDelivery, WebhookQueries, event_id, webhook_event

SESSION_CURSOR, LOG_CURSOR = "v", "p"


class InvalidCursor(ValueError):
    """A cursor that is not one this endpoint's replay gave."""


@dataclass(frozen=True)
class ReplayPage:
    deliveries: list[NewDelivery]
    next: str | None  # where the next call goes on; None once the window is done
    scanned: int  # events read


def replay_page(
    app: SessionsApplication,
    queries: WebhookQueries,
    *,
    endpoint: dict[str, Any],
    window: tuple[datetime, datetime],
    cursor: str | None,
    limit: int,
) -> ReplayPage:
    """The endpoint's deliveries of events recorded in `window` ([start, end)), from `cursor`
    (None: the window's start), reading at most `limit` events."""
    session_id: str | None = endpoint["session_id"]
    kind = LOG_CURSOR if session_id is None else SESSION_CURSOR
    after = _cursor(cursor, kind)
    if session_id is None:
        start = first_position_at(app, window[0]) if after is None else after + 1
        page = app.recorder.select_notifications(start=start, limit=limit)
        return _page(app, endpoint, window, page, limit, LOG_CURSOR, lambda n: n.id)
    uuid = session_uuid(session_id)
    if after is None:
        after = version_before(app, queries, uuid, window[0])
    page = queries.session_notifications(uuid, after, limit)
    return _page(app, endpoint, window, page, limit, SESSION_CURSOR, lambda n: n.originator_version)


def version_before(
    app: SessionsApplication, queries: WebhookQueries, session_id: UUID, instant: datetime
) -> int:
    """The last version of the session recorded before `instant` (0: none), by a binary
    search over its versions (1, 2, … in time order)."""
    last = app.recorder.select_events(session_id, desc=True, limit=1)
    low, high = 0, last[0].originator_version if last else 0
    while low < high:  # version `low` is before `instant` (or 0); those past `high` are not
        middle = (low + high + 1) // 2
        (found,) = queries.session_notifications(session_id, middle - 1, 1)
        event: Any = app.mapper.to_domain_event(found)
        if event.timestamp < instant:
            low = middle
        else:
            high = middle - 1
    return low


def _cursor(cursor: str | None, kind: str) -> int | None:
    if cursor is None:
        return None
    number = cursor[1:]
    if not cursor.startswith(kind) or not number.isdigit() or len(number) > 18:
        raise InvalidCursor(
            f"`after` must be the `next` of this endpoint's last replay, not {cursor!r}"
        )
    return int(number)


def _page(  # noqa: PLR0917 - private, called twice
    app: SessionsApplication,
    endpoint: dict[str, Any],
    window: tuple[datetime, datetime],
    page: Sequence[Notification],
    limit: int,
    kind: str,
    mark: Callable[[Notification], int],
) -> ReplayPage:
    start, end = window
    found: list[NewDelivery] = []
    for scanned, notification in enumerate(page):
        event: Any = app.mapper.to_domain_event(notification)
        if event.timestamp >= end:
            return ReplayPage(found, None, scanned + 1)
        described = webhook_event(event)
        if described is None or event.timestamp < start:
            continue
        type_, data = described
        if type_ in endpoint["events"] and endpoint["session_id"] in (None, data["sessionId"]):
            found.append(
                NewDelivery(
                    webhook_id=endpoint["webhook_id"],
                    event_id=event_id(notification.id),
                    event_type=type_,
                    session_id=data["sessionId"] or "",  # "": a deployment's alert
                    position=notification.id,
                    occurred_at=event.timestamp,
                )
            )
    more = len(page) >= limit
    return ReplayPage(found, f"{kind}{mark(page[-1])}" if more else None, len(page))
