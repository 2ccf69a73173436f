"""Uptime series from known timelines, and the transitions the uptime projection records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.values import ADMIN_ACTOR
from projections.uptime import (
    MemoryUptimeView,
    Transition,
    UptimeProjection,
    floor,
    series,
)
from tests.unit.helpers import catch_up, create, popo_app

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# Created 00:00, connected 01:00, dropped 03:00, stopped 04:00, restarted 06:00, up 06:30.
TIMELINE = [
    Transition(at(0), running=True, connected=False),
    Transition(at(1), running=True, connected=True),
    Transition(at(3), running=True, connected=False),
    Transition(at(4), running=False, connected=False),
    Transition(at(6), running=True, connected=False),
    Transition(at(6.5), running=True, connected=True),
]


def test_hourly_buckets_count_only_the_time_meant_to_be_running() -> None:
    points = series(TIMELINE, at(0), at(8), H)
    assert [p.uptime for p in points] == [0.0, 1.0, 1.0, 0.0, None, None, 0.5, 1.0]
    assert [p.running_seconds for p in points] == [3600] * 4 + [0, 0] + [3600] * 2
    total_running = sum(p.running_seconds for p in points)
    total_connected = sum(p.connected_seconds for p in points)
    assert (total_running, total_connected) == (6 * 3600, 3.5 * 3600)


def test_a_window_starting_inside_the_timeline_takes_the_state_from_before_it() -> None:
    # From 02:00 the state is "connected since 01:00"; the transitions view gives the last
    # one at or before the start first.
    transitions = [TIMELINE[1], *TIMELINE[2:]]
    points = series(transitions, at(2), at(5), H)
    assert [p.uptime for p in points] == [1.0, 0.0, None]


def test_before_creation_there_is_no_uptime_and_a_short_last_bucket_is_kept() -> None:
    points = series(TIMELINE, at(-2), at(1.5), H)
    assert [p.uptime for p in points] == [None, None, 0.0, 1.0]
    assert points[-1].end - points[-1].start == timedelta(minutes=30)


def test_daily_buckets_and_simultaneous_transitions() -> None:
    flapping = [
        Transition(at(0), True, False),
        Transition(at(12), True, True),
        Transition(at(12), True, False),  # dropped at the same instant
        Transition(at(12), True, True),
    ]
    (day,) = series(flapping, at(0), at(24), timedelta(days=1))
    assert day.uptime == pytest.approx(0.5)
    assert floor(at(13.7), timedelta(days=1)) == T0
    assert floor(at(13.7), H) == at(13)


def test_the_projection_records_both_flags_for_every_lifecycle_event() -> None:
    app = popo_app()
    projection = UptimeProjection(MemoryUptimeView())
    sid, uuid = create(app)
    app.record_connected(uuid, "49:1@s.whatsapp.net", "Phone")
    app.record_disconnected(uuid, "connection_lost")
    app.retry(uuid)
    app.stop(sid, ADMIN_ACTOR)
    app.reconnect(sid, ADMIN_ACTOR)
    app.record_qr_expired(uuid)
    app.issue_key(sid, "ignored", ADMIN_ACTOR)
    app.delete(sid, ADMIN_ACTOR)
    catch_up(app, projection)

    far = datetime.now(UTC) + timedelta(days=1)
    flags = [(t.running, t.connected) for t in projection.view.transitions(uuid, T0, far)]
    assert flags == [
        (True, False),  # created
        (True, True),  # connected
        (True, False),  # disconnected
        (True, False),  # retrying
        (False, False),  # stopped
        (True, False),  # reconnect asked
        (True, False),  # QR codes expired: meant to run, not connected
        (False, False),  # deleted
    ]
    assert projection.view.max_tracking_id(app.name) == app.recorder.max_notification_id()
