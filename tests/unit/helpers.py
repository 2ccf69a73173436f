"""Helpers of the unit tests: an in-memory application and a loop feeding projections."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from prometheus_client import CollectorRegistry, generate_latest

from api.controllers.metrics import SessionsCollector
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import ADMIN_ACTOR
from projections.status import MemorySessionStatusView, SessionRow, SessionStatusProjection

#: Plain-old-Python-object persistence, whatever the shell running the tests has exported
#: (the application-prefixed variable wins over the plain one, so both are set).
POPO_ENV = {
    "PERSISTENCE_MODULE": "eventsourcing.popo",
    "SESSIOND_PERSISTENCE_MODULE": "eventsourcing.popo",
}


def event_names(session: Session) -> list[str]:
    """The names of the events `session` has pending, collected (so no longer pending)."""
    return [type(e).__name__ for e in session.collect_events()]


def popo_app(cls: type[SessionsApplication] = SessionsApplication) -> SessionsApplication:
    """A `SessionsApplication` (or subclass) that keeps its events in memory."""
    return cls(env=POPO_ENV)


def create(app: SessionsApplication, name: str = "Support") -> tuple[str, UUID]:
    """Create a session; return its public id and its UUID."""
    created = app.create_session(name, {}, None, ADMIN_ACTOR)
    return created.session_id, app.load(created.session_id).id


def connected(
    app: SessionsApplication, jid: str = "4915112345678:1@s.whatsapp.net"
) -> tuple[SessionStatusProjection, str, UUID]:
    """An empty in-memory status view, and a session created and connected as `jid` (the
    view is not fed yet); the session's public id and UUID."""
    projection = SessionStatusProjection(MemorySessionStatusView())
    session_id, uuid = create(app)
    app.record_connected(uuid, jid, "Ann")
    return projection, session_id, uuid


def head(app: SessionsApplication) -> int:
    """The id of the last notification recorded (0 when nothing has been)."""
    return app.recorder.max_notification_id() or 0


def replay(events: Iterable[Any], start: Session | None = None) -> Session:
    """The aggregate these events make, folded onto `start` without the repository."""
    session: Session | None = functools.reduce(lambda a, e: e.mutate(a), events, start)
    assert session is not None
    return session


def catch_up(app: SessionsApplication, *projections: Projection[Any]) -> int:
    """Feed each projection every notification it has not tracked yet; return how many."""
    fed = 0
    for projection in projections:
        start = (projection.view.max_tracking_id(app.name) or 0) + 1
        for notification in app.recorder.select_notifications(start=start, limit=10_000):
            event = app.mapper.to_domain_event(notification)
            projection.process_event(event, Tracking(app.name, notification.id))
            fed += 1
    return fed


def sessions_metrics(rows: list[SessionRow]) -> str:
    """What `/metrics` says of these sessions (their gauges), as text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionsCollector(rows, {}))
    return generate_latest(registry).decode()
