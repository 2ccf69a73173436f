"""Uptime over time, from the recorded transitions.

**Definition.** Uptime is the share of the time a session was *meant to be running* (created
or reconnected, and not stopped or deleted since) during which it was *connected*. Stopped
time counts neither way. Over a window: connected seconds / running seconds within it; a
window with no running time has no uptime (null), not 0 or 1.

Every lifecycle event fixes both flags (the domain only lets a running session connect,
disconnect, expire or retry), so the projection writes one transition row per such event —
the state from that instant on — and needs no read back. A series is computed from the
transitions inside the window plus the last one before it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Transition:
    at: datetime
    running: bool
    connected: bool


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    running_seconds: float
    connected_seconds: float

    @property
    def uptime(self) -> float | None:
        if self.running_seconds <= 0:
            return None
        return min(1.0, self.connected_seconds / self.running_seconds)


def series(
    transitions: Sequence[Transition], start: datetime, end: datetime, step: timedelta
) -> list[Bucket]:
    """Buckets of `step` from `start` to `end` (the last one may be shorter), given the
    transitions in time order: the last one at or before `start` (if any), then the rest."""
    buckets: list[Bucket] = []
    index = 0
    state: Transition | None = None
    while index < len(transitions) and transitions[index].at <= start:
        state = transitions[index]
        index += 1
    edge = start
    while edge < end:
        stop = min(edge + step, end)
        running = connected = 0.0
        cursor = edge
        while True:
            change_at = transitions[index].at if index < len(transitions) else None
            segment_end = stop if change_at is None or change_at >= stop else change_at
            seconds = (segment_end - cursor).total_seconds()
            if state is not None and state.running and seconds > 0:
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


class UptimeView(TrackingRecorder, ABC):
    @abstractmethod
    def add_transition(self, session_id: UUID, transition: Transition, tracking: Tracking) -> None:
        """Record the state from `transition.at` on, with the tracking record."""

    @abstractmethod
    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        """The last transition at or before `start`, then those up to `end`, in order."""


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
        return before + [t for t in rows if start < t.at <= end]
