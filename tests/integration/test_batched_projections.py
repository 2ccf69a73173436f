"""Projection runners apply the events already read in one transaction per page: the views
must come out exactly as if each event had been applied alone — including a key issued and
revoked within one page, whose revocation reads a row not yet committed, and a text queued,
sent and delivered within one page, whose updates read a row written earlier in it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.postgres.gateway import PostgresGatewayView
from infra.postgres.keys import PostgresApiKeyView
from infra.postgres.messages import PostgresMessagesView
from infra.postgres.status import PostgresSessionStatusView
from infra.runtime.supervisor import BATCH_LIMIT, ProjectionSupervisor
from projections.gateway import GatewayProjection, MemoryGatewayView
from projections.keys import ApiKeyProjection
from projections.messages import MessagePage, MessagesProjection
from projections.status import SessionStatusProjection
from tests.conftest import view_on
from tests.unit.helpers import catch_up

VIEWS: list[tuple[Any, Any]] = [
    (SessionStatusProjection, PostgresSessionStatusView),
    (ApiKeyProjection, PostgresApiKeyView),
    (GatewayProjection, PostgresGatewayView),
    (MessagesProjection, PostgresMessagesView),
]


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[SessionsApplication]:
    application = SessionsApplication(env=env)
    for projection, view in VIEWS:
        view_on(env, projection.name, view).datastore.close()  # create the tables
    yield application
    application.close()


def test_a_backlog_applied_in_pages_gives_the_views_each_event_would(
    app: SessionsApplication, env: dict[str, str], database_url: str
) -> None:
    # A backlog recorded while no projector runs: more events than one page.
    def history(n: int) -> str:
        created = app.create_session(f"Backlog {n}", {}, None, ADMIN_ACTOR)
        sid = created.session_id
        uuid = app.load(sid).id
        extra = app.issue_key(sid, "short-lived", ADMIN_ACTOR)
        app.revoke_key(sid, extra.key_id, ADMIN_ACTOR)  # issued and revoked in one page
        app.record_qr(uuid, "2@code", datetime.now(UTC) + timedelta(seconds=60), 1, 6)
        app.record_connected(uuid, f"49{n:09d}:1@s.whatsapp.net", "Phone")
        for m in range(n % 3):  # queued, sent, then (for some) delivered
            queued = app.send_message(
                sid, "14155550123@s.whatsapp.net", f"text {m}", None, ADMIN_ACTOR
            )
            app.record_sent(uuid, queued.message_id, f"WA{n}-{m}")
            if m == 1:
                app.record_acks(uuid, [f"WA{n}-{m}"], "delivered", datetime.now(UTC))
        if n % 4 == 1 and n % 5 != 0:  # one left waiting (the gateway row counts it)
            app.send_message(sid, "14155550123@s.whatsapp.net", "waiting", None, ADMIN_ACTOR)
        app.record_disconnected(uuid, "connection_lost", "dropped")
        if n % 3 == 0:
            app.stop(sid, ADMIN_ACTOR)
        if n % 5 == 0:
            app.delete(sid, ADMIN_ACTOR)
        return sid

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(history, range(120)))
    head = app.recorder.max_notification_id()
    assert head is not None and head > BATCH_LIMIT

    supervisors = [
        ProjectionSupervisor(
            projection, view, {**env, "CREATE_TABLE": "n"}, database_url, check_interval=0.2
        )
        for projection, view in VIEWS
    ]
    for supervisor in supervisors:
        supervisor.start()
    try:
        readers = {p.name: view_on(env, p.name, v) for p, v in VIEWS}
        deadline = time.monotonic() + 60
        while any(r.max_tracking_id(app.name) != head for r in readers.values()):
            assert time.monotonic() < deadline, "the views never caught up"
            time.sleep(0.1)

        # Check every row agrees with the session it was built from.
        alone = GatewayProjection(view=MemoryGatewayView())
        catch_up(app, alone)
        waiting = sends = 0
        status, keys, gateway = readers["session_status"], readers["api_keys"], readers["gateway"]
        messages = readers["messages"]
        for sid in sessions:
            session = app.load(sid)
            row = status.get_session(sid)
            assert (row.status, row.reason, row.desired) == (
                session.status,
                session.reason,
                session.desired,
            )
            # (KeysRevoked, the last event of a deleted session, is not the status view's.)
            assert row.version == session.version - (1 if session.is_deleted else 0)
            assert row.retry_attempt == session.retry_attempt
            key_rows = {k.key_id: k.is_active for k in keys.keys_of_session(sid)}
            assert key_rows == {k.key_id: k.is_active for k in session.keys.values()}
            assert sum(key_rows.values()) == (0 if session.is_deleted else 1)
            wanted = gateway.row(session.id)
            assert wanted is not None and wanted.desired == session.desired
            texts = messages.list_messages(MessagePage(sid, limit=10))
            n = sessions.index(sid)
            expected = {0: [], 1: ["sent"], 2: ["delivered", "sent"]}[n % 3]
            expected = sorted(expected + (["queued"] if n % 4 == 1 and n % 5 != 0 else []))
            assert sorted(m.status for m in texts) == expected
            # The gateway's row and deadlines, as one event at a time leaves them.
            alone_row = alone.view.row(session.id)
            assert alone_row is not None and gateway.row(session.id) == alone_row
            by_kind = {d.kind: d for d in alone.view.deadlines(session.id)}
            assert {d.kind: d for d in gateway.deadlines(session.id)} == by_kind
            waiting += int(alone_row.queued > 0)
            sends += int("send" in by_kind)
        # Both sides of the send deadline's condition (connected with messages waiting or not).
        assert waiting > 0 and 0 < sends < len(sessions)
        for reader in readers.values():
            reader.datastore.close()
    finally:
        for supervisor in supervisors:
            supervisor.stop()
