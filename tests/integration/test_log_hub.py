"""The shared reader of the event log: every subscription of a process sees every event after
its start, once, in order, whether it starts behind the hub, keeps up with it or falls behind;
and the log is read once per page however many subscriptions there are."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from application.sessions import SessionsApplication
from infra.postgres import loghub
from infra.postgres.loghub import HubSubscription, LogHub
from infra.postgres.recorder import PollingApplicationRecorder
from infra.settings import eventsourcing_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(database_url: str) -> Iterator[SessionsApplication]:
    PollingApplicationRecorder.poll_interval = 0.2
    application = SessionsApplication(env=eventsourcing_env(database_url))
    yield application
    application.close()


def recorder_of(app: SessionsApplication) -> PollingApplicationRecorder:
    recorder = app.recorder
    assert isinstance(recorder, PollingApplicationRecorder)
    return recorder


def record(app: SessionsApplication, count: int) -> list[int]:
    """`count` sessions created (one commit each, several events); the notification ids."""
    recorder = recorder_of(app)
    before = recorder.max_notification_id() or 0
    for n in range(count):
        app.create_session(f"S{n}", {}, None, "admin")
    return list(range(before + 1, (recorder.max_notification_id() or 0) + 1))


def take(subscription: Any, count: int, timeout: float = 30.0) -> list[int]:
    """The ids of the next `count` notifications (from a thread, so a hang fails the test)."""
    ids: list[int] = []

    def read() -> None:
        for notification in subscription:
            ids.append(notification.id)
            if len(ids) == count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"only {len(ids)} of {count} notifications arrived"
    return ids


def test_subscriptions_share_one_reader_and_each_sees_every_event_once_in_order(
    app: SessionsApplication,
) -> None:
    recorder = recorder_of(app)
    before = record(app, 3)
    start = recorder.max_notification_id()
    subscriptions = [recorder.subscribe(gt=start) for _ in range(4)]
    behind = recorder.subscribe(gt=before[0])  # starts behind the hub: reads for itself first
    try:
        hubs = {s._hub for s in [*subscriptions, behind] if isinstance(s, HubSubscription)}
        assert len(hubs) == 1
        hub = hubs.pop()
        reads_before = hub.reads
        recorded = record(app, 30)
        for subscription in subscriptions:
            assert take(subscription, len(recorded)) == recorded
        expected = before[1:] + recorded
        assert take(behind, len(expected)) == expected
        # Thirty commits, four subscriptions: the hub read each page once, not four times.
        assert 1 <= hub.reads - reads_before <= 30
    finally:
        for subscription in [*subscriptions, behind]:
            subscription.stop()
    assert not LogHub._hubs.get(hub._key)  # the last one out closed the hub


def test_a_subscription_that_falls_far_behind_reads_for_itself_and_misses_nothing(
    app: SessionsApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loghub, "BACKLOG_LIMIT", 5)
    monkeypatch.setattr(loghub, "WINDOW", 8)
    recorder = recorder_of(app)
    slow = recorder.subscribe(gt=recorder.max_notification_id())
    fast = recorder.subscribe(gt=recorder.max_notification_id())
    try:
        assert isinstance(slow, HubSubscription)
        first = record(app, 1)
        assert take(slow, len(first)) == first  # attached
        recorded = record(app, 40)  # while `slow` reads nothing: it is detached
        assert take(fast, len(first) + len(recorded)) == first + recorded
        deadline = time.monotonic() + 30
        while slow._attached and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not slow._attached
        assert take(slow, len(recorded)) == recorded
        later = record(app, 3)
        assert take(slow, len(later)) == later  # caught up: it attaches again
        assert slow._attached
    finally:
        slow.stop()
        fast.stop()


def test_the_hub_reconnects_when_its_connections_are_killed(
    app: SessionsApplication, database_url: str
) -> None:
    recorder = recorder_of(app)
    subscription = recorder.subscribe(gt=recorder.max_notification_id())
    try:
        first = record(app, 2)
        assert take(subscription, len(first)) == first
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        recorded = record(app, 5)
        assert take(subscription, len(recorded), timeout=60) == recorded
    finally:
        subscription.stop()
