"""Group commit: commands saved together keep their own outcomes."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from application.commit import GroupCommitter
from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid


def _pending(session: Any) -> tuple[Any, list[Any]]:
    return session, list(session.collect_events())


def test_a_conflict_in_a_batch_fails_only_the_command_that_conflicted() -> None:
    app = SessionsApplication()
    a = app.create_session("A", {}, None, ADMIN_ACTOR).session_id
    b = app.create_session("B", {}, None, ADMIN_ACTOR).session_id
    stale = app.load(a)
    app.stop(a, ADMIN_ACTOR)  # another writer moves A on: `stale` is now out of date
    stale.stop(ADMIN_ACTOR)
    other = app.load(b)
    other.stop(ADMIN_ACTOR)

    committer = GroupCommitter(app._record_batch)
    conflicted: Future[int] = Future()
    fine: Future[int] = Future()
    committer._commit([(_pending(stale), conflicted), (_pending(other), fine)])

    # Check only A's command gets the conflict; B's is recorded with its own position.
    with pytest.raises(IntegrityError):
        conflicted.result(timeout=30)
    assert fine.result(timeout=30) == app.recorder.max_notification_id()
    assert app.load(b).is_stopped
    assert len(list(app.events.get(session_uuid(a)))) == 3  # created, key, the other stop
    app.close()


def test_commands_on_many_sessions_from_many_threads_are_all_recorded_once() -> None:
    app = SessionsApplication()
    ids = [app.create_session(f"S{n}", {}, None, ADMIN_ACTOR).session_id for n in range(20)]
    with ThreadPoolExecutor(8) as pool:
        positions = list(pool.map(lambda sid: app.stop(sid, ADMIN_ACTOR), ids))
    assert len(set(positions)) == 20
    assert all(app.load(sid).is_stopped for sid in ids)
    app.close()
