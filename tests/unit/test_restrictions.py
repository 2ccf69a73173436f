"""Restrictions: the pure policy (which reasons restrict, when the queue is paused, when it
ends), the session's `Restricted` / `RestrictionLifted` events, the status row and webhooks
built from them, the metrics by kind, and the sender holding a restricted session's queue."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from eventsourcing.domain import Snapshot

from api.dashboard.present import banner
from api.presenters import message_out, status_out
from application.ports import SentMessage
from application.sessions import SessionsApplication
from domain.policy import RESTRICTING_REASONS, LiftCause, Restriction, RestrictionPolicy
from domain.session import Session
from domain.values import ADMIN_ACTOR, Reason, Status, public_session_id
from domain.webhook import EVENT_TYPES
from infra.runtime.sender import MessageSender
from projections.messages import OUTBOUND, MessageRow
from projections.status import SessionRow
from projections.webhooks import webhook_event
from tests.unit.helpers import catch_up, connected, create, event_names, popo_app, sessions_metrics

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
JID = "4915112345678:1@s.whatsapp.net"
TO = "14155550123@s.whatsapp.net"
POLICY = RestrictionPolicy()


# -- the policy ----------------------------------------------------------------------------


def test_a_ban_restricts_until_its_end_and_pauses_the_queue_until_then() -> None:
    ends = NOW + timedelta(minutes=10)
    found = POLICY.restriction(Reason.TEMPORARILY_BANNED, "banned", ends)
    assert found == Restriction("temporarily_banned", ends, "banned")
    assert POLICY.paused(found, NOW)
    assert POLICY.paused(found, ends - timedelta(microseconds=1))
    assert not POLICY.paused(found, ends)
    assert POLICY.lifted(found, connected=False, now=NOW) is None
    assert POLICY.lifted(found, connected=False, now=ends) == LiftCause.BAN_ENDED


@pytest.mark.parametrize(
    "reason",
    [Reason.LOGGED_OUT, Reason.DEVICE_UNLINKED, Reason.STREAM_REPLACED, Reason.CLIENT_OUTDATED],
)
def test_a_reason_that_needs_a_person_pauses_until_the_session_connects(reason: Reason) -> None:
    # An end given with it is not a ban's: only a connection lifts it.
    found = POLICY.restriction(reason, "", NOW)
    assert found == Restriction(reason.value, None, "")
    years_later = NOW + timedelta(days=3650)
    assert POLICY.paused(found, years_later)
    assert POLICY.lifted(found, connected=False, now=years_later) is None
    assert POLICY.lifted(found, connected=True, now=NOW) == LiftCause.CONNECTED


@pytest.mark.parametrize("reason", sorted(set(Reason) - RESTRICTING_REASONS))
def test_other_reasons_restrict_nothing(reason: Reason) -> None:
    assert POLICY.restriction(reason, "x", NOW) is None


def test_a_message_goes_out_only_when_connected_and_not_paused() -> None:
    banned = Restriction("temporarily_banned", NOW + timedelta(seconds=1))
    logged_out = Restriction("logged_out")
    assert POLICY.may_send(Status.CONNECTED, None, NOW)
    assert not POLICY.may_send(Status.CONNECTED, banned, NOW)
    assert not POLICY.may_send(Status.CONNECTED, logged_out, NOW)
    assert POLICY.may_send(Status.CONNECTED, banned, NOW + timedelta(seconds=1))
    for status in (Status.CONNECTING, Status.DISCONNECTED, Status.EXPIRED):
        assert not POLICY.may_send(status, None, NOW)
    assert POLICY.lifted(None, connected=True, now=NOW) is None
    assert not POLICY.paused(None, NOW)


# -- the aggregate -------------------------------------------------------------------------


def connected_session() -> Session:
    session = Session(id=UUID(int=1), name="S", labels={}, requests_per_minute=None, actor="a")
    session.connect(JID, "Ann")
    session.collect_events()
    return session


def test_a_ban_is_recorded_with_its_disconnection_and_not_twice() -> None:
    session = connected_session()
    ends = NOW + timedelta(minutes=5)
    session.disconnect("temporarily_banned", "banned", 1, ends, until=ends)
    assert event_names(session) == ["Disconnected", "Restricted"]
    assert session.restriction == Restriction("temporarily_banned", ends, "banned")
    assert session.queue_paused(NOW)
    # Tried again during the ban (an operator's reconnect): the same ban records no second
    # restriction; a later end does.
    session.request_reconnect(ADMIN_ACTOR)
    session.disconnect("temporarily_banned", "banned", 1, ends, until=ends)
    assert event_names(session) == ["ReconnectRequested", "Disconnected"]
    session.request_reconnect(ADMIN_ACTOR)
    longer = ends + timedelta(minutes=5)
    session.disconnect("temporarily_banned", "banned", 1, longer, until=longer)
    assert event_names(session) == ["ReconnectRequested", "Disconnected", "Restricted"]
    assert session.restriction is not None
    assert session.restriction.until == longer


def test_a_ban_without_a_known_end_lasts_until_the_planned_retry() -> None:
    session = connected_session()
    retry = NOW + timedelta(minutes=5)
    session.disconnect("temporarily_banned", "", 1, retry)
    assert session.restriction == Restriction("temporarily_banned", retry, "")


def test_the_retry_after_the_ban_lifts_it_and_one_before_does_not() -> None:
    session = connected_session()
    ends = NOW + timedelta(minutes=5)
    session.disconnect("temporarily_banned", "", 1, ends, until=ends)
    session.collect_events()
    session.attempt_reconnect(NOW)
    assert event_names(session) == ["ReconnectAttempted"]
    assert session.restriction is not None
    session.disconnect("connection_lost", "", 1, NOW)
    session.collect_events()
    session.attempt_reconnect(ends)
    events: list[Any] = list(session.collect_events())
    assert [type(e).__name__ for e in events] == ["RestrictionLifted", "ReconnectAttempted"]
    assert events[0].cause == "ban_ended"
    assert events[0].kind == "temporarily_banned"
    assert session.restriction is None


def test_a_reconnect_asked_after_the_ban_of_a_stopped_session_lifts_it() -> None:
    session = connected_session()
    ends = NOW + timedelta(minutes=5)
    session.disconnect("temporarily_banned", "", 1, ends, until=ends)
    session.stop(ADMIN_ACTOR)
    session.collect_events()
    session.request_reconnect(ADMIN_ACTOR, ends - timedelta(seconds=1))
    assert event_names(session) == ["ReconnectRequested"]
    session.stop(ADMIN_ACTOR)
    session.collect_events()
    session.request_reconnect(ADMIN_ACTOR, ends)
    assert event_names(session) == ["RestrictionLifted", "ReconnectRequested"]
    assert session.restriction is None


def test_a_logout_holds_through_a_stop_a_reconnect_and_new_qr_codes_until_connected() -> None:
    session = connected_session()
    session.disconnect("logged_out", "unlinked", 1, None)
    assert event_names(session) == ["Disconnected", "Restricted"]
    session.stop(ADMIN_ACTOR)
    session.request_reconnect(ADMIN_ACTOR)
    session.issue_qr("code", NOW, 1, 6)
    assert session.restriction == Restriction("logged_out", None, "unlinked")
    session.collect_events()
    session.connect(JID, "Ann")
    events: list[Any] = list(session.collect_events())
    assert [type(e).__name__ for e in events] == ["Connected", "RestrictionLifted"]
    assert events[1].cause == "connected"
    assert session.restriction is None
    assert not session.queue_paused(NOW)


def test_a_lost_connection_restricts_nothing() -> None:
    session = connected_session()
    session.disconnect("connection_lost", "", 1, NOW)
    assert event_names(session) == ["Disconnected"]
    assert session.restriction is None


def test_the_restriction_survives_a_reload_from_the_log_and_a_snapshot() -> None:
    app = popo_app()
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    ends = datetime.now(UTC) + timedelta(minutes=5)
    app.record_disconnected(uuid, "temporarily_banned", "banned", ends)
    loaded: Session = app.repository.get(uuid)  # folded from the recorded events
    assert loaded.restriction == Restriction("temporarily_banned", ends, "banned")
    stored = app.mapper.to_stored_event(Snapshot.take(loaded))
    snapshot: Any = app.mapper.to_domain_event(stored)
    restored = snapshot.mutate(None)
    assert restored.restriction == loaded.restriction


# -- the status row, the presenters, webhooks and metrics ----------------------------------


def restricted_row(app: SessionsApplication) -> tuple[SessionRow, Any]:
    projection, session_id, uuid = connected(app, JID)
    app.send_message(session_id, TO, "held", None, ADMIN_ACTOR)
    ends = datetime.now(UTC) + timedelta(minutes=5)
    app.record_disconnected(uuid, "temporarily_banned", "banned", ends)
    catch_up(app, projection)
    row = projection.view.get_session(session_id)
    assert row is not None
    return row, projection


def test_the_status_shows_the_restriction_and_drops_it_when_lifted() -> None:
    app = popo_app()
    row, projection = restricted_row(app)
    shown = status_out(row).restriction
    assert shown is not None
    assert (shown.kind, shown.detail) == ("temporarily_banned", "banned")
    assert shown.until == row.restriction_until
    assert shown.since is not None
    uuid = app.load(row.session_id).id
    app.record_connected(uuid, JID, "Ann")
    catch_up(app, projection)
    lifted = projection.view.get_session(row.session_id)
    assert lifted.restriction_kind is None
    assert status_out(lifted).restriction is None


def test_a_queued_message_of_a_restricted_session_says_why_it_waits() -> None:
    app = popo_app()
    row, _ = restricted_row(app)
    message = MessageRow(
        message_id="msg_1",
        session_id=row.session_id,
        direction=OUTBOUND,
        status="queued",
        to=TO,
        created_at=NOW,
        updated_at=NOW,
        version=1,
        position=1,
    )
    held = message_out(message, "held", row)
    assert held.reason == "temporarily_banned"
    assert held.restriction is not None
    assert held.restriction.until == row.restriction_until
    sent = message_out(msgspec.structs.replace(message, status="sent"), "held", row)
    assert (sent.reason, sent.restriction) == (None, None)
    clear = msgspec.structs.replace(row, restriction_kind=None)
    assert message_out(message, "held", clear).restriction is None


def test_restrictions_are_webhook_events() -> None:
    assert {"session.restricted", "session.restriction-lifted"} <= set(EVENT_TYPES)
    app = popo_app()
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    ends = datetime(2026, 12, 5, 12, 5, tzinfo=UTC)
    app.record_disconnected(uuid, "temporarily_banned", "banned", ends)
    app.retry(uuid)
    events = list(app.events.get(uuid))
    found = [webhook_event(e) for e in events]
    restricted = next(f for f in found if f and f[0] == "session.restricted")
    assert restricted[1] == {
        "sessionId": public_session_id(uuid),
        "kind": "temporarily_banned",
        "until": "2026-12-05T12:05:00Z",
        "detail": "banned",
    }
    lifted = next(f for f in found if f and f[0] == "session.restriction-lifted")
    assert lifted[1] == {
        "sessionId": public_session_id(uuid),
        "kind": "temporarily_banned",
        "cause": "ban_ended",
    }


def test_metrics_count_restricted_sessions_by_kind_leaving_out_deleted_ones() -> None:
    base = SessionRow(
        session_id="a", name="S", status="disconnected", created_at=NOW, updated_at=NOW
    )

    def row(kind: str | None, desired: str = "running") -> SessionRow:
        return msgspec.structs.replace(base, restriction_kind=kind, desired=desired)

    rows = [
        row("logged_out"),
        row("logged_out"),
        row("temporarily_banned"),
        row(None),
        row("client_outdated", "deleted"),
    ]
    text = sessions_metrics(rows)
    assert 'sessiond_sessions_restricted{kind="logged_out"} 2.0' in text
    assert 'sessiond_sessions_restricted{kind="temporarily_banned"} 1.0' in text
    assert 'sessiond_sessions_restricted{kind="client_outdated"} 0.0' in text
    assert 'sessiond_sessions_restricted{kind="stream_replaced"} 0.0' in text


def test_the_dashboard_banner_says_what_to_do() -> None:
    app = popo_app()
    row, _ = restricted_row(app)
    shown = banner(row)
    assert shown is not None
    assert shown.title == "Temporarily banned by WhatsApp"
    assert "resumes by itself" in shown.advice
    assert shown.waiting == 1
    clear = SessionRow(session_id="x", name="S", status="connected", created_at=NOW, updated_at=NOW)
    assert banner(clear) is None


# -- the sender ----------------------------------------------------------------------------


class AcceptingGateway:
    """Takes every text, connected or not: only the sender's own decision holds a message."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.lock = threading.Lock()

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        with self.lock:
            self.sent.append(text)
            return SentMessage(f"WA{len(self.sent)}", datetime.now(UTC))


def test_the_sender_holds_a_restricted_queue_and_drains_it_in_order_once_connected() -> None:
    app, gateway = popo_app(), AcceptingGateway()
    session_id, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    app.record_disconnected(uuid, "logged_out", "unlinked")
    for text in ("a", "b", "c"):
        app.send_message(session_id, TO, text, None, ADMIN_ACTOR)
    sender = MessageSender(app, gateway, lambda _: True, interval=0.0)  # type: ignore[arg-type]
    try:
        sender.kick(uuid)
        deadline = time.monotonic() + 5
        while sender.draining() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not sender.draining()
        assert gateway.sent == []
        session = app.load(uuid)
        assert len(session.outbox.queue) == 3  # nothing failed, nothing dropped
        app.reconnect(session_id, ADMIN_ACTOR)
        app.record_connected(uuid, "4915100000000:2@s.whatsapp.net", "Ann")
        sender.kick(uuid)
        deadline = time.monotonic() + 10
        while app.load(uuid).next_message() is not None:
            assert time.monotonic() < deadline, "not drained"
            time.sleep(0.01)
        assert gateway.sent == ["a", "b", "c"]
    finally:
        sender.close()
