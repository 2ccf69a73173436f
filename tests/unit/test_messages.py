"""Messages in the domain and the projections, in memory: the queue's order and bounds,
idempotency keys, acks, inbound dedup, the cascade of a delete, snapshots, the status
counters, the messages view and the send deadline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot

from application.ports import InboundMessage
from application.sessions import SessionsApplication
from domain.errors import (
    IdempotencyKeyReused,
    InvalidTransition,
    InvalidValue,
    QueueFull,
    SessionIsDeleted,
)
from domain.outbox import RECENT_INBOUND, RECENT_MESSAGES
from domain.session import Session
from domain.values import (
    ADMIN_ACTOR,
    MAX_QUEUED_MESSAGES,
    MAX_TEXT_LENGTH,
    DeadlineKind,
    public_session_id,
)
from infra.settings import Settings, SettingsError
from projections.gateway import GatewayProjection, MemoryGatewayView
from projections.messages import MemoryMessagesView, MessagePage, MessagesProjection
from projections.status import MemorySessionStatusView, SessionStatusProjection
from tests.unit.helpers import catch_up, create, popo_app

TO = "14155550123@s.whatsapp.net"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def app() -> SessionsApplication:
    return popo_app()


def queue(app: SessionsApplication, session_id: str, text: str, key: str | None = None) -> str:
    return app.send_message(session_id, TO, text, key, ADMIN_ACTOR).message_id


def connect(app: SessionsApplication, uuid: UUID) -> None:
    app.record_connected(uuid, "1555:1@s.whatsapp.net", "Phone")


def test_the_queue_keeps_the_order_and_only_the_head_can_be_sent(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    first, second = queue(app, session_id, "one"), queue(app, session_id, "two")
    session = app.load(uuid)
    assert [m.message_id for m in session.outbox.queue] == [first, second]
    with pytest.raises(InvalidTransition):
        session.mark_sent(second, "WA2")
    assert app.record_sent(uuid, second, "WA2") is None  # a stale report is dropped
    app.record_sent(uuid, first, "WA1")
    assert app.load(uuid).next_message().message_id == second  # type: ignore[union-attr]


def test_bad_recipients_and_texts_are_refused_before_anything_is_recorded(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    version = app.load(uuid).version
    for to, text in [
        ("+14155550123", "x"),  # the API turns phone numbers into JIDs, the domain does not
        ("12@s.whatsapp.net", "x"),
        (TO, ""),
        (TO, " \t\n"),
        (TO, "x" * (MAX_TEXT_LENGTH + 1)),
        (TO, "nul\x00"),
    ]:
        with pytest.raises(InvalidValue):
            app.send_message(session_id, to, text, None, ADMIN_ACTOR)
    assert app.load(uuid).version == version


def test_a_full_queue_refuses_more(app: SessionsApplication) -> None:
    _, uuid = create(app)
    session = app.load(uuid)
    for n in range(MAX_QUEUED_MESSAGES):
        session.queue_message(f"msg_{n:032x}", TO, "x", None, ADMIN_ACTOR)
    with pytest.raises(QueueFull):
        session.queue_message("msg_" + "f" * 32, TO, "x", None, ADMIN_ACTOR)


def test_an_idempotency_key_answers_the_first_message_and_refuses_another_text(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    first = app.send_message(session_id, TO, "hi", "k1", ADMIN_ACTOR)
    again = app.send_message(session_id, TO, "hi", "k1", ADMIN_ACTOR)
    assert (again.message_id, again.replayed, again.position) == (first.message_id, True, None)
    with pytest.raises(IdempotencyKeyReused):
        app.send_message(session_id, TO, "hello", "k1", ADMIN_ACTOR)
    with pytest.raises(IdempotencyKeyReused):
        app.send_message(session_id, "14155550999@s.whatsapp.net", "hi", "k1", ADMIN_ACTOR)
    assert len(app.load(uuid).outbox.queue) == 1


def test_the_session_remembers_a_bounded_number_of_sent_messages(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    connect(app, uuid)
    for n in range(RECENT_MESSAGES + 20):
        message_id = queue(app, session_id, f"m{n}", key=f"k{n}")
        app.record_sent(uuid, message_id, f"WA{n}")
    session = app.load(uuid)
    assert len(session.outbox.recent) == RECENT_MESSAGES
    assert session.queued_message("k0", TO, "m0") is None  # forgotten: the view answers it
    assert session.queued_message(f"k{RECENT_MESSAGES + 19}", TO, f"m{RECENT_MESSAGES + 19}")


def test_a_key_the_session_forgot_is_answered_from_the_messages_view(
    app: SessionsApplication,
) -> None:
    """The application owns idempotency: a retry with a key older than the session's memory
    gets the first message from the view, checked against its recorded text."""
    view = MemoryMessagesView()
    projection = MessagesProjection(view=view)
    app.message_index = view
    session_id, uuid = create(app)
    connect(app, uuid)
    first = app.send_message(session_id, TO, "the first", "k-old", ADMIN_ACTOR)
    app.record_sent(uuid, first.message_id, "WA-first")
    for n in range(RECENT_MESSAGES):
        app.record_sent(uuid, queue(app, session_id, f"m{n}"), f"WA{n}")
    catch_up(app, projection)
    assert app.load(uuid).queued_message("k-old", TO, "the first") is None  # forgotten
    head = app.recorder.max_notification_id()

    again = app.send_message(session_id, TO, "the first", "k-old", ADMIN_ACTOR)
    assert (again.message_id, again.replayed, again.status) == (first.message_id, True, "sent")
    assert again.position is None and app.recorder.max_notification_id() == head
    with pytest.raises(IdempotencyKeyReused, match=first.message_id):
        app.send_message(session_id, TO, "another text", "k-old", ADMIN_ACTOR)
    with pytest.raises(IdempotencyKeyReused):
        app.send_message(
            session_id, "14155550999@s.whatsapp.net", "the first", "k-old", ADMIN_ACTOR
        )
    assert app.recorder.max_notification_id() == head


def test_acks_move_forward_only_and_unknown_ids_are_ignored(app: SessionsApplication) -> None:
    session_id, uuid = create(app)
    connect(app, uuid)
    message_id = queue(app, session_id, "hi")
    app.record_sent(uuid, message_id, "WA1")
    assert app.record_acks(uuid, ["nope"], "delivered", NOW) is None
    assert app.record_acks(uuid, ["WA1"], "read", NOW) is not None
    assert app.record_acks(uuid, ["WA1"], "delivered", NOW) is None  # after read: nothing
    assert app.record_acks(uuid, ["WA1"], "read", NOW) is None  # a repeat: nothing
    assert app.load(uuid).outbox.recent[message_id].status == "read"
    with pytest.raises(InvalidValue):
        app.load(uuid).acknowledge("WA1", "played", NOW)


def test_an_inbound_message_is_recorded_once_per_whatsapp_id(app: SessionsApplication) -> None:
    _, uuid = create(app)
    connect(app, uuid)
    message = InboundMessage("3EB0X", TO, TO, "hello", NOW, "Ann")
    assert app.record_received(uuid, message) is not None
    assert app.record_received(uuid, message) is None
    events = [type(e).__name__ for e in app.events.get(uuid)]
    assert events.count("MessageReceived") == 1


def test_deleting_a_session_fails_its_queue_in_the_same_save(app: SessionsApplication) -> None:
    session_id, uuid = create(app)
    ids = [queue(app, session_id, "a"), queue(app, session_id, "b")]
    app.delete(session_id, ADMIN_ACTOR)
    events = list(app.events.get(uuid))
    failed = [e for e in events if isinstance(e, Session.MessageFailed)]
    assert [e.message_id for e in failed] == ids
    assert {e.reason for e in failed} == {"session_deleted"}
    assert app.load(uuid).outbox.queue == []
    with pytest.raises(SessionIsDeleted):
        queue(app, session_id, "late")


def test_a_snapshot_carries_the_queue(app: SessionsApplication) -> None:
    session_id, uuid = create(app)
    message_id = queue(app, session_id, "kept", key="k")
    snapshot = Snapshot.take(app.load(uuid))
    decoded: Any = app.mapper.to_domain_event(app.mapper.to_stored_event(snapshot))
    restored = decoded.mutate(None)
    (queued,) = restored.outbox.queue
    (event,) = app.events.get(uuid, gt=queued.version - 1, lte=queued.version)
    assert isinstance(event, Session.MessageQueued) and event.text == "kept"
    assert "kept" not in str(snapshot.state)  # the text is not copied into snapshots
    assert restored.queued_message("k", TO, "kept") == message_id


def test_the_status_counts_messages_and_shows_the_queue_and_last_activity(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    status = SessionStatusProjection(view=MemorySessionStatusView())
    ids = [queue(app, session_id, f"m{n}") for n in range(3)]
    catch_up(app, status)
    row = status.view.get_session(session_id)
    assert row is not None and (row.queue_depth, row.messages_sent) == (3, 0)
    assert row.last_activity_at is None
    connect(app, uuid)
    app.record_sent(uuid, ids[0], "WA0")
    app.record_send_failed(uuid, ids[1], "rejected", "not on WhatsApp")
    app.record_acks(uuid, ["WA0"], "delivered", NOW)
    app.record_received(uuid, InboundMessage("3EB0Y", TO, TO, "yo", NOW))
    catch_up(app, status)
    row = status.view.get_session(session_id)
    assert row is not None
    counts = (
        row.queue_depth,
        row.messages_sent,
        row.messages_failed,
        row.messages_delivered,
        row.messages_received,
    )
    assert counts == (1, 1, 1, 1, 1)
    received = next(e for e in app.events.get(uuid) if isinstance(e, Session.MessageReceived))
    assert row.last_activity_at == received.timestamp


def test_the_messages_view_follows_each_message(app: SessionsApplication) -> None:
    session_id, uuid = create(app)
    view = MemoryMessagesView()
    projection = MessagesProjection(view=view)
    first, second = queue(app, session_id, "a", key="k"), queue(app, session_id, "b")
    connect(app, uuid)
    app.record_sent(uuid, first, "WA1")
    app.record_acks(uuid, ["WA1"], "read", NOW)
    app.record_send_failed(uuid, second, "send_failed", "timeout")
    app.record_received(uuid, InboundMessage("3EB0Z", TO, TO, "in", NOW, "Ann"))
    catch_up(app, projection)
    one, two = view.get_message(first), view.get_message(second)
    assert one is not None and (one.status, one.whatsapp_id, one.read_at) == ("read", "WA1", NOW)
    assert one.idempotency_key == "k" and one.sent_at is not None
    assert two is not None and (two.status, two.reason, two.detail) == (
        "failed",
        "send_failed",
        "timeout",
    )
    rows = view.list_messages(MessagePage(public_session_id(uuid)))
    assert [r.direction for r in rows] == ["inbound", "outbound", "outbound"]
    assert rows[0].push_name == "Ann" and rows[0].status == "received"
    assert view.find_by_idempotency_key(session_id, "k") == one


def test_the_send_deadline_is_set_when_messages_wait_and_the_session_can_send(
    app: SessionsApplication,
) -> None:
    session_id, uuid = create(app)
    gateway = GatewayProjection(view=MemoryGatewayView())
    connect(app, uuid)  # nothing waiting: no deadline
    catch_up(app, gateway)
    assert DeadlineKind.SEND not in {d.kind for d in gateway.view.deadlines(uuid)}
    queue(app, session_id, "x")
    catch_up(app, gateway)
    assert DeadlineKind.SEND in {d.kind for d in gateway.view.deadlines(uuid)}
    row = gateway.view.row(uuid)
    assert row is not None and row.queued == 1
    app.delete(session_id, ADMIN_ACTOR)
    catch_up(app, gateway)
    assert DeadlineKind.SEND not in {d.kind for d in gateway.view.deadlines(uuid)}
    row = gateway.view.row(uuid)
    assert row is not None and row.queued == 0


@pytest.mark.parametrize("key", ["not base64!", "c2hvcnQ=", "QUJD" * 10])
def test_a_malformed_cipher_key_is_a_clear_settings_error(key: str) -> None:
    with pytest.raises(SettingsError, match="SESSIOND_CIPHER_KEY"):
        Settings.from_env({"SESSIOND_CIPHER_KEY": key})


def connected_with_index(app: SessionsApplication) -> tuple[str, UUID, MemoryMessagesView]:
    """A connected session of `app`, whose messages it no longer remembers are found in a
    messages view (returned)."""
    session_id, uuid = create(app)
    view = MemoryMessagesView()
    app.message_index = view
    connect(app, uuid)
    return session_id, uuid, view


def test_a_late_ack_of_a_message_the_session_forgot_is_recorded_from_the_view(
    app: SessionsApplication,
) -> None:
    session_id, uuid, view = connected_with_index(app)
    first = queue(app, session_id, "old one")
    app.record_sent(uuid, first, "WA-OLD")
    for n in range(RECENT_MESSAGES + 5):
        app.record_sent(uuid, queue(app, session_id, f"m{n}"), f"WA{n}")
    catch_up(app, MessagesProjection(view=view))
    assert not app.load(uuid).remembers("WA-OLD")
    assert app.record_acks(uuid, ["WA-OLD"], "read", NOW) is not None
    assert app.record_acks(uuid, ["WA-UNKNOWN"], "read", NOW) is None
    catch_up(app, MessagesProjection(view=view))
    row = view.get_message(first)
    assert row is not None and row.status == "read"
    # A delivered that arrives after the read does not move the view back.
    app.record_acks(uuid, ["WA-OLD"], "delivered", NOW)
    catch_up(app, MessagesProjection(view=view))
    row = view.get_message(first)
    assert row is not None and row.status == "read"


def test_an_inbound_message_delivered_again_long_after_is_recorded_once(
    app: SessionsApplication,
) -> None:
    _, uuid, view = connected_with_index(app)
    app.record_received(uuid, InboundMessage("3EB0-FIRST", TO, TO, "hello", NOW))
    for n in range(RECENT_INBOUND + 5):
        app.record_received(uuid, InboundMessage(f"3EB0-{n}", TO, TO, "more", NOW))
    catch_up(app, MessagesProjection(view=view))
    assert not app.load(uuid).remembers("3EB0-FIRST")
    again = InboundMessage("3EB0-FIRST", TO, TO, "hello", NOW)
    assert app.record_received(uuid, again) is None


def test_the_api_offers_exactly_the_webhook_event_catalogue() -> None:
    import msgspec

    from api.schemas import WebhookChangeIn, WebhookIn
    from domain.webhook import EVENT_TYPES

    # Check each body takes every type of the catalogue, all at once, and nothing else.
    every = {"url": "https://example.com/hook", "events": list(EVENT_TYPES)}
    assert msgspec.convert(every, WebhookIn).events == list(EVENT_TYPES)
    assert msgspec.convert(every, WebhookChangeIn).events == list(EVENT_TYPES)
    for body in (WebhookIn, WebhookChangeIn):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**every, "events": ["session.renamed"]}, body)
    assert {"session.restricted", "session.restriction-lifted", "session.health-changed"} <= set(
        EVENT_TYPES
    )
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 17
