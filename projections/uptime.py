"""Uptime: its one definition, and every computation of it.

**Definition.** Uptime is the share of the time a session was *in service* during which it was
*connected*, as a percentage from 0 to 100 rounded to two decimals. In service: meant to be
running (created or reconnected, and not stopped or deleted since) **and linked**, i.e. from
the session's first link (its first ``Connected``) on: the wait for the first scan was never
service, so it is not downtime. Stopped time counts neither way. A span with no time in service
has no uptime (null), not 0 or 100.

Two views count it from the same events. The status row (`projections.status.SessionRow`)
keeps per-UTC-day accumulators, so the status, the dashboard's card and its list read it from
memory (`projections.status.status_uptime`, kept current by `advance`); the uptime view keeps
one transition per lifecycle event, so any window can be charted (`series`: the JSON series
and the dashboard's chart).
`uptime_percent` alone turns counted seconds into the figure, so at one instant every place
that shows a session's uptime shows the same number.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from domain.session import Session

BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def uptime_percent(in_service_seconds: float, connected_seconds: float) -> float | None:
    """The uptime figure: connected seconds per second in service, as a percentage (0 to 100,
    two decimals); None when there was no time in service. Every place that shows uptime
    gets its figure from here."""
    if in_service_seconds <= 0:
        return None
    return round(min(100.0, 100.0 * connected_seconds / in_service_seconds), 2)


# -- the uptime view: one transition per lifecycle event, any window -------------------------


@dataclass(frozen=True)
class Transition:
    """The state of a session from `at` on: meant to be running, connected."""

    at: datetime
    running: bool
    connected: bool


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    running_seconds: float  # in service: meant to be running, since the first link
    connected_seconds: float

    @property
    def uptime(self) -> float | None:
        return uptime_percent(self.running_seconds, self.connected_seconds)


def overall(buckets: Iterable[Bucket]) -> float | None:
    """The uptime of the whole span the buckets cover."""
    running = connected = 0.0
    for bucket in buckets:
        running += bucket.running_seconds
        connected += bucket.connected_seconds
    return uptime_percent(running, connected)


def first_link(transitions: Iterable[Transition]) -> datetime | None:
    """When the session was first linked: its first connected transition."""
    return next((t.at for t in transitions if t.connected), None)


def series(
    transitions: Sequence[Transition], start: datetime, end: datetime, step: timedelta
) -> list[Bucket]:
    """Buckets of `step` from `start` to `end` (the last one may be shorter), given the
    transitions as `UptimeView.transitions` returns them: in time order, the first link among
    them even when it came before `start`. Time before the first link is not in service."""
    linked_at = first_link(transitions)
    buckets: list[Bucket] = []
    index = 0
    state: Transition | None = None
    while index < len(transitions) and transitions[index].at <= start:
        state = transitions[index]
        index += 1
    edge = start
    while edge < end:
        stop = end if end - edge <= step else edge + step  # never past `end`: no overflow
        running = connected = 0.0
        cursor = edge
        while True:
            change_at = transitions[index].at if index < len(transitions) else None
            segment_end = stop if change_at is None or change_at >= stop else change_at
            if state is not None and state.running and linked_at is not None:
                seconds = (segment_end - max(cursor, linked_at)).total_seconds()
                if seconds > 0:
                    running += seconds
                    if state.connected:
                        connected += seconds
            if segment_end == stop:
                break
            state = transitions[index]
            index += 1
            cursor = segment_end
        buckets.append(Bucket(edge, stop, running, connected))
        edge = stop
    return buckets


def floor(instant: datetime, step: timedelta) -> datetime:
    """`instant` rounded down to a whole hour or day (UTC)."""
    instant = instant.astimezone(UTC)
    if step >= timedelta(days=1):
        return instant.replace(hour=0, minute=0, second=0, microsecond=0)
    return instant.replace(minute=0, second=0, microsecond=0)


# -- the status row: per-day accumulators, read from memory ----------------------------------


def split_by_day(start: datetime, end: datetime) -> list[tuple[str, float]]:
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


class UptimeView(TrackingRecorder, ABC):
    @abstractmethod
    def add_transition(self, session_id: UUID, transition: Transition, tracking: Tracking) -> None:
        """Record the state from `transition.at` on, with the tracking record."""

    @abstractmethod
    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        """In time order: the last transition at or before `start` (preceded by the session's
        first connected one, its first link, when that last one is not connected), then those
        up to `end`."""


class UptimeProjection(Projection[UptimeView]):
    name = "uptime"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    def _add(self, event: Any, running: bool, connected: bool, tracking: Tracking) -> None:
        transition = Transition(event.timestamp, running, connected)
        self.view.add_transition(event.originator_id, transition, tracking)

    @process_event.register
    def _created(self, event: Session.Created, tracking: Tracking) -> None:
        self._add(event, True, False, tracking)

    @process_event.register
    def _connected(self, event: Session.Connected, tracking: Tracking) -> None:
        self._add(event, True, True, tracking)

    @process_event.register
    def _disconnected(self, event: Session.Disconnected, tracking: Tracking) -> None:
        self._add(event, True, False, tracking)

    @process_event.register
    def _expired(self, event: Session.QRExpired, tracking: Tracking) -> None:
        self._add(event, True, False, tracking)

    @process_event.register
    def _reconnect(self, event: Session.ReconnectRequested, tracking: Tracking) -> None:
        self._add(event, True, False, tracking)

    @process_event.register
    def _attempted(self, event: Session.ReconnectAttempted, tracking: Tracking) -> None:
        self._add(event, True, False, tracking)

    @process_event.register
    def _stopped(self, event: Session.Stopped, tracking: Tracking) -> None:
        self._add(event, False, False, tracking)

    @process_event.register
    def _exported(self, event: Session.SessionExported, tracking: Tracking) -> None:
        self._add(event, False, False, tracking)

    @process_event.register
    def _deleted(self, event: Session.Deleted, tracking: Tracking) -> None:
        self._add(event, False, False, tracking)


class MemoryUptimeView(POPOTrackingRecorder, UptimeView):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[UUID, list[Transition]] = {}
        self._lock = threading.Lock()

    def add_transition(self, session_id: UUID, transition: Transition, tracking: Tracking) -> None:
        with self._lock:
            self._rows.setdefault(session_id, []).append(transition)
        self.insert_tracking(tracking)

    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        with self._lock:
            rows = list(self._rows.get(session_id, []))
        before = [t for t in rows if t.at <= start][-1:]
        if before and not before[0].connected:
            before = [t for t in rows if t.connected and t.at <= start][:1] + before
        return before + [t for t in rows if start < t.at <= end]
