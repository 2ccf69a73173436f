"""Revocations are written by the recorder in the transaction of the event that revokes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, ProgrammingError

from application.keys import SESSION_KEY_KIND, generate_key
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import ADMIN_ACTOR, session_uuid
from infra.bootstrap import Container
from infra.runtime.rebuild import ViewRebuild
from infra.settings import eventsourcing_env
from tests.conftest import test_settings
from tests.integration.conftest import ADMIN, Api


@pytest.fixture
def app(database_url: str) -> Iterator[SessionsApplication]:
    application = SessionsApplication(env=eventsourcing_env(database_url, pool_size=2))
    yield application
    application.close()


def revocations(database_url: str) -> list[tuple[int, str, list[str], bool]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT position, session_id, key_ids, session_deleted FROM sessiond_revocations "
            "ORDER BY position"
        ).fetchall()
    return [(int(p), str(s), list(k), bool(d)) for p, s, k, d in rows]


def topic_at(database_url: str, position: int) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT topic FROM sessiond_events WHERE notification_id = %s", (position,)
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_revoke_and_a_delete_write_their_revocations_at_their_events_positions(
    app: SessionsApplication, database_url: str
) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid, first = created.session_id, created.first_key.key_id
    second = app.issue_key(sid, "ci", ADMIN_ACTOR)
    third = app.issue_key(sid, "ops", ADMIN_ACTOR)
    assert revocations(database_url) == []

    revoked_at = app.revoke_key(sid, second.key_id, ADMIN_ACTOR)
    assert revoked_at is not None
    assert revocations(database_url) == [(revoked_at, sid, [second.key_id], False)]
    assert topic_at(database_url, revoked_at) == "sessiond:Session.ApiKeyRevoked"

    # Check the delete writes its own row (the session) and the cascade's (its active keys).
    deleted_at = app.delete(sid, ADMIN_ACTOR)
    rows = revocations(database_url)
    deleted = next(row for row in rows if row[3])
    cascade = next(row for row in rows if row[2] and row[0] != revoked_at)
    assert topic_at(database_url, deleted[0]) == "sessiond:Session.Deleted"
    assert topic_at(database_url, cascade[0]) == "sessiond:Session.KeysRevoked"
    assert sorted(cascade[2]) == sorted([first, third.key_id])
    assert deleted[0] < cascade[0] <= deleted_at

    # Check what a retried revoke or delete waits for is the revocation recorded then.
    assert app.recorded_revocation(sid, second.key_id) == revoked_at
    assert app.recorded_revocation(sid, first) == cascade[0]
    assert app.recorded_revocation(sid) == deleted[0]


def test_revocations_saved_in_one_group_commit_each_get_their_own_events_position(
    app: SessionsApplication, database_url: str
) -> None:
    created = [app.create_session(f"S{n}", {}, None, ADMIN_ACTOR) for n in range(3)]
    sessions = [app.load(c.session_id) for c in created]
    sessions[0].revoke_key(created[0].first_key.key_id, ADMIN_ACTOR)
    sessions[1].stop(ADMIN_ACTOR)  # revokes nothing
    sessions[2].delete(ADMIN_ACTOR)
    batch = [(s, list(s.collect_events())) for s in sessions]

    recordings = app._record_batch(batch)  # the group committer's one transaction

    position_of = {
        (r.notification.originator_id, r.notification.topic): r.notification.id for r in recordings
    }
    rows = revocations(database_url)
    assert rows == sorted(
        [
            (
                position_of[(sessions[0].id, "sessiond:Session.ApiKeyRevoked")],
                created[0].session_id,
                [created[0].first_key.key_id],
                False,
            ),
            (
                position_of[(sessions[2].id, "sessiond:Session.Deleted")],
                created[2].session_id,
                [],
                True,
            ),
            (
                position_of[(sessions[2].id, "sessiond:Session.KeysRevoked")],
                created[2].session_id,
                [created[2].first_key.key_id],
                False,
            ),
        ]
    )


def test_a_conflicting_batch_writes_no_revocation_and_each_command_is_then_saved_alone(
    app: SessionsApplication, database_url: str
) -> None:
    a = app.create_session("A", {}, None, ADMIN_ACTOR)
    b = app.create_session("B", {}, None, ADMIN_ACTOR)
    session_a = app.load(a.session_id)
    stale_b = app.load(b.session_id)
    app.stop(b.session_id, ADMIN_ACTOR)  # another writer saves B: the copy above is stale
    session_a.revoke_key(a.first_key.key_id, ADMIN_ACTOR)
    stale_b.revoke_key(b.first_key.key_id, ADMIN_ACTOR)
    batch = [(s, list(s.collect_events())) for s in (session_a, stale_b)]

    # Check the batch as one transaction fails whole: no revocation of either is written.
    with pytest.raises(IntegrityError):
        app._record_batch(batch)
    assert revocations(database_url) == []

    # Check the group committer then saves each alone: A with its revocation, B refused.
    futures: list[Future[int]] = [Future(), Future()]
    app.committer._commit(list(zip(batch, futures, strict=True)))
    position = futures[0].result()
    assert isinstance(futures[1].exception(), IntegrityError)
    assert revocations(database_url) == [(position, a.session_id, [a.first_key.key_id], False)]


def test_a_revoking_event_is_never_recorded_without_its_revocation(
    app: SessionsApplication, database_url: str
) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    session = app.load(created.session_id)
    session.revoke_key(created.first_key.key_id, ADMIN_ACTOR)
    stored = [app.mapper.to_stored_event(e) for e in session.collect_events()]
    head = app.recorder.max_notification_id()

    # Check the recorder refuses it when its revocation is not handed over with it.
    with pytest.raises(ProgrammingError):
        app.recorder.insert_events(stored)
    assert app.recorder.max_notification_id() == head

    # Check the database refuses it too, whoever writes it (the trigger, at commit).
    event = stored[0]
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.RaiseException),
        conn.transaction(),
    ):
        conn.execute(
            "INSERT INTO sessiond_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)",
            (event.originator_id, event.originator_version, event.topic, event.state),
        )
    assert app.recorder.max_notification_id() == head
    assert revocations(database_url) == []


def test_revocations_recorded_before_the_table_existed_are_written_when_it_is_made(
    database_url: str, tmp_path: Any
) -> None:
    settings = test_settings(tmp_path, database_url)
    first = Container(settings, database_url, frozenset({"api"}))
    created = first.app.create_session("Old", {}, None, ADMIN_ACTOR)
    kept = first.app.create_session("Kept", {}, None, ADMIN_ACTOR)
    revoked_at = first.app.revoke_key(kept.session_id, kept.first_key.key_id, ADMIN_ACTOR)
    first.app.delete(created.session_id, ADMIN_ACTOR)
    before = revocations(database_url)
    first.close()  # its listener too: left running, it outlives the test's database
    # A database of the version before: no table, no trigger (and no migrations recorded:
    # that version had none).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER sessiond_revocation_recorded ON sessiond_events")
        conn.execute("DROP TABLE sessiond_revocations")
        conn.execute("DROP TABLE _yoyo_migration, _yoyo_log, _yoyo_version, yoyo_lock")

    second = Container(settings, database_url, frozenset({"api"}))
    try:
        assert revocations(database_url) == before
        assert (revoked_at, kept.session_id, [kept.first_key.key_id], False) in before
        assert len(before) == 3
    finally:
        second.close()


def test_a_save_that_revokes_nothing_writes_no_revocation(
    app: SessionsApplication, database_url: str
) -> None:
    session = Session(
        id=uuid4(), name="Plain", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
    )
    key = generate_key(SESSION_KEY_KIND)
    session.issue_key(key.key_id, key.prefix, key.key_hash, "default", ADMIN_ACTOR)
    app.committer.save(session)
    app.stop("sess_" + session.id.hex, ADMIN_ACTOR)
    assert revocations(database_url) == []
    assert app.load(session_uuid("sess_" + session.id.hex)).keys[key.key_id].is_active


async def test_rebuilding_the_key_view_keeps_every_revocation_in_force(
    api: Api, database_url: str
) -> None:
    created = await api.create_session("Rebuilt")
    sid = created["sessionId"]
    issued = await api.client.post(f"/sessions/{sid}/keys", json={}, headers=ADMIN)
    revoked = {"x-api-key": issued.json()["key"]}
    answer = await api.client.delete(
        f"/sessions/{sid}/keys/{issued.json()['keyId']}", headers=ADMIN
    )
    assert answer.status_code == 204
    before = revocations(database_url)

    # The key view is rebuilt into a new generation and switched to: the API process reloads
    # its copy of the keys whole, but not its revocations.
    report = await asyncio.to_thread(ViewRebuild(api.container, "api_keys", progress=False).run)
    assert report.generation == 1
    assert revocations(database_url) == before
    status = f"/sessions/{sid}/status"
    assert (await api.client.get(status, headers=revoked)).status_code == 401
    assert (await api.client.get(status, headers=Api.key(created))).status_code == 200
