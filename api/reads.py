"""The expensive reads themselves, as they run on the pool of `api.expensive`: each takes
what it reads with (`Readers`) and plain arguments, and answers the response body encoded
(JSON bytes), so that a read in a reader process leaves the API process nothing to do but
send it. Every function here is module-level and its arguments and results picklable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec

from api.presenters import event_out, session_out
from api.schemas import EventPageOut, UptimeBucketOut, UptimeSeriesOut
from application.sessions import SessionsApplication
from domain.values import session_uuid
from projections.history import HistoryEntry, StatusSnapshots, log_page, session_history
from projections.history import state_as_of as _state_as_of
from projections.replay import ReplayPage, replay_page
from projections.uptime import BUCKETS, UptimeView, overall, series
from projections.webhooks import WebhookQueries

_ENCODER = msgspec.json.Encoder()


class Readers(Protocol):
    """What the reads read with: the API's own context, or a reader process's objects."""

    @property
    def app(self) -> SessionsApplication: ...
    @property
    def uptime(self) -> UptimeView: ...
    @property
    def webhook_queries(self) -> WebhookQueries: ...
    @property
    def status_snapshots(self) -> StatusSnapshots | None: ...
    @property
    def replay_max_events(self) -> int: ...
    @property
    def default_requests_per_minute(self) -> int: ...


@dataclass(frozen=True)
class OwnReaders:
    """A reader process's own objects (see `infra.readers`)."""

    app: SessionsApplication
    uptime: UptimeView
    webhook_queries: WebhookQueries
    status_snapshots: StatusSnapshots | None
    replay_max_events: int
    default_requests_per_minute: int


def state_as_of(readers: Readers, session_id: str, instant: datetime) -> bytes | None:
    """The session as it was at `instant` (None: it did not exist yet)."""
    row = _state_as_of(readers.app, session_uuid(session_id), instant, readers.status_snapshots)
    if row is None:
        return None
    return _ENCODER.encode(session_out(row, readers.default_requests_per_minute))


def _page(entries: list[HistoryEntry], limit: int, cursor: str) -> bytes:
    items = [event_out(e) for e in entries]
    last = getattr(entries[-1], cursor) if entries and len(entries) == limit else None
    return _ENCODER.encode(EventPageOut(items=items, next=last))


def session_events(readers: Readers, session_id: str, after: int, limit: int) -> bytes:
    """A page of the session's events after version `after`."""
    entries = session_history(readers.app, session_uuid(session_id), after, limit)
    return _page(entries, limit, "version")


def log_events(readers: Readers, after: int, limit: int) -> bytes:
    """A page of the global log after position `after`."""
    return _page(log_page(readers.app, after, limit), limit, "position")


def uptime_series(
    readers: Readers,
    session_id: str,
    window: tuple[datetime, datetime],
    bucket: Literal["hour", "day"],
) -> bytes:
    """The session's uptime series over `window` ([begin, stop)) in buckets of `bucket`."""
    begin, stop = window
    transitions = readers.uptime.transitions(session_uuid(session_id), begin, stop)
    points = series(transitions, begin, stop, BUCKETS[bucket])
    return _ENCODER.encode(
        UptimeSeriesOut(
            session_id=session_id,
            start=begin,
            end=stop,
            bucket=bucket,
            uptime=overall(points),
            items=[
                UptimeBucketOut(
                    start=p.start,
                    end=p.end,
                    running_seconds=round(p.running_seconds, 3),
                    connected_seconds=round(p.connected_seconds, 3),
                    uptime=p.uptime,
                )
                for p in points
            ],
        )
    )


class ReplayInProgress(Exception):
    """Another replay of the endpoint holds it."""


#: How long a replay holds its endpoint at most (a process that dies mid-replay lets go then).
REPLAY_HOLD = 60.0


def replay(
    readers: Readers,
    endpoint: dict[str, Any],
    window: tuple[datetime, datetime],
    after: str | None,
) -> tuple[int, str | None]:
    """Find a bounded page of the endpoint's events in `window` and enqueue them, holding
    the endpoint's replay (in every process) until done: how many were enqueued, and where
    the next call goes on."""
    queries, webhook_id = readers.webhook_queries, endpoint["webhook_id"]
    if not queries.begin_replay(webhook_id, REPLAY_HOLD):
        raise ReplayInProgress(webhook_id)
    try:
        page: ReplayPage = replay_page(
            readers.app,
            queries,
            endpoint=endpoint,
            window=window,
            cursor=after,
            limit=readers.replay_max_events,
        )
        if page.deliveries:
            queries.replay(page.deliveries)
        return len(page.deliveries), page.next
    finally:
        queries.end_replay(webhook_id)
