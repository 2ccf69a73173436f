"""Projections are run once across processes, restarted when they fail, and never stall."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from application.sessions import SessionsApplication
from infra.postgres.recorder import PollingApplicationRecorder
from infra.postgres.status import PostgresSessionStatusView
from infra.runtime.supervisor import ProjectionSupervisor
from projections.status import SessionStatusProjection
from tests.conftest import view_on
from tests.waiting import eventually


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[SessionsApplication]:
    application = SessionsApplication(env=env)
    view_on(env, "session_status", PostgresSessionStatusView).datastore.close()  # create tables
    yield application
    application.close()


@pytest.fixture
def supervisors(
    env: dict[str, str], database_url: str
) -> Iterator[Callable[[], ProjectionSupervisor]]:
    started: list[ProjectionSupervisor] = []

    def new() -> ProjectionSupervisor:
        supervisor = ProjectionSupervisor(
            SessionStatusProjection,
            PostgresSessionStatusView,
            {**env, "CREATE_TABLE": "n"},
            database_url,
            check_interval=0.2,
            restart_delay=0.2,
        )
        supervisor.start()
        started.append(supervisor)
        return supervisor

    yield new
    for supervisor in started:
        supervisor.stop()


def _tracked(env: dict[str, str]) -> int:
    view = view_on(env, "session_status", PostgresSessionStatusView)
    try:
        return int(view.max_tracking_id("sessiond") or 0)
    finally:
        view.datastore.close()


def test_only_one_process_runs_a_projection_and_another_takes_over(
    app: SessionsApplication,
    env: dict[str, str],
    supervisors: Callable[[], ProjectionSupervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tries: dict[ProjectionSupervisor, int] = {}
    pause = ProjectionSupervisor._sleep

    def sleep(self: ProjectionSupervisor) -> None:  # after each lock tried in vain
        tries[self] = tries.get(self, 0) + 1
        pause(self)

    monkeypatch.setattr(ProjectionSupervisor, "_sleep", sleep)
    first, second = supervisors(), supervisors()
    eventually(lambda: first.is_leader.is_set() or second.is_leader.is_set())
    leader, standby = (first, second) if first.is_leader.is_set() else (second, first)
    # Check the standby tries the lock (in vain) again and again while the leader runs.
    seen = tries.get(standby, 0)
    eventually(lambda: tries.get(standby, 0) >= seen + 2)
    assert leader.is_leader.is_set() and not standby.is_leader.is_set()

    created = app.create_session("One", {}, None, "admin")
    eventually(lambda: _tracked(env) >= created.position)

    # Check: when the leader stops, the standby takes over and the view keeps up.
    leader.stop()
    eventually(standby.is_leader.is_set)
    later = app.create_session("Two", {}, None, "admin")
    eventually(lambda: _tracked(env) >= later.position)


def test_a_runner_whose_connections_are_killed_is_restarted_and_catches_up(
    app: SessionsApplication,
    env: dict[str, str],
    database_url: str,
    supervisors: Callable[[], ProjectionSupervisor],
) -> None:
    supervisor = supervisors()
    eventually(supervisor.is_leader.is_set)
    created = app.create_session("Before", {}, None, "admin")
    eventually(lambda: _tracked(env) >= created.position)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    after = app.create_session("After", {}, None, "admin")
    eventually(lambda: _tracked(env) >= after.position, timeout=30)
    assert supervisor.restarts >= 1


class _SilentRecorder(PollingApplicationRecorder):
    """Records events without NOTIFY, as if every notification were lost."""

    def _notify_channel(self, curs: Any) -> None:
        return None


def test_a_subscription_still_sees_events_when_every_notify_is_lost(
    env: dict[str, str], app: SessionsApplication
) -> None:
    silent = SessionsApplication(
        env={
            **env,
            "APPLICATION_RECORDER_TOPIC": f"{__name__}:_SilentRecorder",
        }
    )
    recorder = app.recorder
    assert isinstance(recorder, PollingApplicationRecorder)
    subscription = recorder.subscribe(gt=recorder.max_notification_id())  # polls every 0.2 s
    with subscription:
        created = silent.create_session("Quiet", {}, None, "admin")
        # Check the poll delivers the Created event although no NOTIFY was ever sent.
        notification = next(subscription)
        assert notification.id == created.position - 1
        assert notification.topic == "sessiond:Session.Created"
    silent.close()
