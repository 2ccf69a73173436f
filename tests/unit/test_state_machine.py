"""Random sequences of commands against the application, checked against a small model of
what each command should do, and against replays of the events recorded so far."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    UUIDAsHex,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from application.ports import InboundMessage
from application.sessions import SessionsApplication, domain_transcodings
from domain.access import SCOPES
from domain.errors import InvalidTransition, InvalidValue, SessionIsDeleted, UnknownApiKey
from domain.session import Session
from domain.values import ADMIN_ACTOR, MAX_REQUESTS_PER_MINUTE, key_actor
from projections.gateway import GatewayProjection, MemoryGatewayView
from projections.keys import ApiKeyProjection, MemoryApiKeyView
from projections.status import MemorySessionStatusView, SessionStatusProjection
from tests.unit.helpers import catch_up, head, popo_app, replay

STATUSES = {"connecting", "connected", "disconnected", "expired"}
LATER = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
JID = "4915112345678:1@s.whatsapp.net"
TO = "4915112345678@s.whatsapp.net"

#: What a command should do: raise this error, record events (True) or record nothing (False).
Expected = type[Exception] | bool


@dataclass
class Model:
    """What the test believes about one session."""

    status: str = "connecting"
    reason: str | None = None
    desired: str = "running"
    keys: dict[str, bool] = field(default_factory=dict)  # key id -> active
    scopes: dict[str, list[str] | None] = field(default_factory=dict)  # key id -> its scopes
    expiries: dict[str, datetime] = field(default_factory=dict)  # key id -> its expiry
    requests_per_minute: int | None = None
    attempt: int = 0  # failures in a row
    degraded: bool = False
    queue: list[str] = field(default_factory=list)  # outbound message ids waiting, in order
    sent: dict[str, str] = field(default_factory=dict)  # WhatsApp id -> message status
    received: set[str] = field(default_factory=set)  # WhatsApp ids of inbound messages
    counts: dict[str, int] = field(default_factory=dict)  # status counter -> value

    @property
    def running(self) -> bool:
        return self.desired == "running"

    @property
    def deleted(self) -> bool:
        return self.desired == "deleted"


def independent_mapper() -> Mapper[UUID]:
    """A mapper built here, not by any `SessionsApplication`, with the same transcodings."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), *domain_transcodings()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


class SessionsMachine(RuleBasedStateMachine):
    app_class: ClassVar[type[SessionsApplication]] = SessionsApplication

    sessions: Bundle[str] = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.app = popo_app(self.app_class)
        self.models: dict[str, Model] = {}
        self.status = SessionStatusProjection(MemorySessionStatusView())
        self.keys = ApiKeyProjection(MemoryApiKeyView())
        self.gateway = GatewayProjection(MemoryGatewayView())
        self.mapper = independent_mapper()

    def run(self, expected: Expected, command: Callable[[], object]) -> bool:
        """Run a command and check it did what was expected; True if it recorded events."""
        before = head(self.app)
        if not isinstance(expected, bool):
            with pytest.raises(expected):
                command()
            assert head(self.app) == before
            return False
        position = command()
        if not expected:
            assert position is None
            assert head(self.app) == before
            return False
        assert isinstance(position, int)
        assert position == head(self.app) > before
        return True

    def uuid(self, session_id: str) -> UUID:
        return self.app.load(session_id).id

    # -- operators and clients ------------------------------------------------------------

    @rule(target=sessions, name=st.sampled_from(["Support", "  Sales ", "Ops"]))
    def create(self, name: str) -> str:
        created = self.app.create_session(name, {"team": "eu"}, None, ADMIN_ACTOR)
        assert created.position == head(self.app)
        self.models[created.session_id] = Model(keys={created.first_key.key_id: True})
        return created.session_id

    @rule(session_id=sessions)
    def stop(self, session_id: str) -> None:
        m = self.models[session_id]
        expected: Expected = SessionIsDeleted if m.deleted else m.running
        if self.run(expected, lambda: self.app.stop(session_id, ADMIN_ACTOR)):
            m.status, m.reason, m.desired = "disconnected", "stopped", "stopped"
            m.attempt, m.degraded = 0, False

    @rule(session_id=sessions)
    def reconnect(self, session_id: str) -> None:
        m = self.models[session_id]
        expected: Expected
        if m.deleted:
            expected = SessionIsDeleted
        elif m.desired == "stopped" or m.status in ("disconnected", "expired"):
            expected = True
        else:
            expected = InvalidTransition
        if self.run(expected, lambda: self.app.reconnect(session_id, key_actor("key_x"))):
            m.status, m.reason, m.desired = "connecting", None, "running"
            m.attempt, m.degraded = 0, False

    @rule(session_id=sessions)
    def delete(self, session_id: str) -> None:
        m = self.models[session_id]
        expected: Expected = SessionIsDeleted if m.deleted else True
        if self.run(expected, lambda: self.app.delete(session_id, ADMIN_ACTOR)):
            m.status, m.reason, m.desired = "disconnected", "deleted", "deleted"
            m.attempt, m.degraded = 0, False
            m.keys = dict.fromkeys(m.keys, False)
            m.counts["messages_failed"] = m.counts.get("messages_failed", 0) + len(m.queue)
            m.queue = []

    @rule(
        session_id=sessions,
        scopes=st.one_of(st.none(), st.lists(st.sampled_from(SCOPES), min_size=1, unique=True)),
        days=st.one_of(st.none(), st.integers(1, 3)),
    )
    def issue_key(self, session_id: str, scopes: list[str] | None, days: int | None) -> None:
        m = self.models[session_id]
        expires_at = None if days is None else LATER + timedelta(days=days)

        def issue() -> Any:
            return self.app.issue_key(
                session_id, "ci", ADMIN_ACTOR, scopes=scopes, expires_at=expires_at
            )

        if m.deleted:
            self.run(SessionIsDeleted, issue)
            return
        issued = issue()
        assert issued.position == head(self.app)
        m.keys[issued.key_id] = True
        m.scopes[issued.key_id] = None if scopes is None else [s for s in SCOPES if s in scopes]
        if expires_at is not None:
            m.expiries[issued.key_id] = expires_at

    @rule(session_id=sessions, days=st.integers(0, 4))
    def expire_keys(self, session_id: str, days: int) -> None:
        """The worker's tick as if `days` days after `LATER` (keys expire 1 to 3 days after)."""
        m = self.models[session_id]
        at = LATER + timedelta(days=days)
        due = [k for k, active in m.keys.items() if active and m.expiries.get(k, at + DAY) <= at]
        expected: Expected = False if m.deleted else bool(due)
        if self.run(expected, lambda: self.app.expire_keys(session_id, at)):
            for key_id in due:
                m.keys[key_id] = False

    @rule(session_id=sessions, data=st.data())
    def revoke_key(self, session_id: str, data: st.DataObject) -> None:
        m = self.models[session_id]
        key_id = data.draw(st.sampled_from([*sorted(m.keys), "key_0000000000000000"]))
        expected: Expected
        if m.deleted:
            expected = SessionIsDeleted
        elif key_id not in m.keys:
            expected = UnknownApiKey
        else:
            expected = m.keys[key_id]
        if self.run(expected, lambda: self.app.revoke_key(session_id, key_id, ADMIN_ACTOR)):
            m.keys[key_id] = False

    @rule(
        session_id=sessions,
        limit=st.one_of(
            st.none(),
            st.sampled_from([0, 1, MAX_REQUESTS_PER_MINUTE, MAX_REQUESTS_PER_MINUTE + 1]),
            st.integers(-3, 200),
        ),
    )
    def set_rate_limit(self, session_id: str, limit: int | None) -> None:
        m = self.models[session_id]
        expected: Expected
        if m.deleted:
            expected = SessionIsDeleted
        elif limit is not None and not 1 <= limit <= MAX_REQUESTS_PER_MINUTE:
            expected = InvalidValue
        else:
            expected = True
        if self.run(expected, lambda: self.app.set_rate_limit(session_id, limit, ADMIN_ACTOR)):
            m.requests_per_minute = limit

    # -- messages ---------------------------------------------------------------------------

    @rule(session_id=sessions, text=st.sampled_from(["hi", "  spaced  ", " ", "ünïcode ✓"]))
    def send_message(self, session_id: str, text: str) -> None:
        m = self.models[session_id]
        expected: Expected = SessionIsDeleted if m.deleted else (text.strip() != "" or InvalidValue)
        queued: list[str] = []

        def send() -> int | None:
            result = self.app.send_message(session_id, TO, text, None, ADMIN_ACTOR)
            queued.append(result.message_id)
            return result.position

        if self.run(expected, send):
            m.queue.append(queued[0])

    @rule(session_id=sessions, outcome=st.sampled_from(["sent", "failed", "stale"]))
    def send_next(self, session_id: str, outcome: str) -> None:
        m = self.models[session_id]
        uuid = self.uuid(session_id)
        if outcome == "stale" or not m.queue or m.deleted:
            self.run(False, lambda: self.app.record_sent(uuid, "msg_" + "0" * 32, "WA"))
            return
        message_id = m.queue.pop(0)
        if outcome == "sent":
            whatsapp_id = f"WA{len(m.sent)}"
            self.run(True, lambda: self.app.record_sent(uuid, message_id, whatsapp_id))
            m.sent[whatsapp_id] = "sent"
            m.counts["messages_sent"] = m.counts.get("messages_sent", 0) + 1
        else:
            self.run(True, lambda: self.app.record_send_failed(uuid, message_id, "rejected", "no"))
            m.counts["messages_failed"] = m.counts.get("messages_failed", 0) + 1

    @rule(session_id=sessions, status=st.sampled_from(["delivered", "read"]), data=st.data())
    def ack(self, session_id: str, status: str, data: st.DataObject) -> None:
        m = self.models[session_id]
        whatsapp_id = data.draw(st.sampled_from([*sorted(m.sent), "WA-unknown"]))
        current = m.sent.get(whatsapp_id)
        applies = not m.deleted and (
            (status == "delivered" and current == "sent")
            or (status == "read" and current in ("sent", "delivered"))
        )
        uuid = self.uuid(session_id)
        if self.run(applies, lambda: self.app.record_acks(uuid, [whatsapp_id], status, LATER)):
            m.sent[whatsapp_id] = status
            counter = f"messages_{status}"
            m.counts[counter] = m.counts.get(counter, 0) + 1

    @rule(session_id=sessions, whatsapp_id=st.sampled_from(["IN1", "IN2", "IN3"]))
    def receive(self, session_id: str, whatsapp_id: str) -> None:
        m = self.models[session_id]
        applies = not m.deleted and whatsapp_id not in m.received
        uuid = self.uuid(session_id)
        message = InboundMessage(whatsapp_id, TO, TO, "hello", LATER)
        if self.run(applies, lambda: self.app.record_received(uuid, message)):
            m.received.add(whatsapp_id)
            m.counts["messages_received"] = m.counts.get("messages_received", 0) + 1

    # -- what the gateway reports: dropped (None) when it no longer applies ------------------

    @rule(session_id=sessions)
    def record_connected(self, session_id: str) -> None:
        m = self.models[session_id]
        applies = m.running and m.status in ("connecting", "disconnected")
        uuid = self.uuid(session_id)
        if self.run(applies, lambda: self.app.record_connected(uuid, JID, "Phone")):
            m.status, m.reason, m.attempt, m.degraded = "connected", None, 0, False

    @rule(
        session_id=sessions,
        reason=st.sampled_from(
            ["connection_lost", "logged_out", "whatsapp_unreachable", "stream_replaced"]
        ),
    )
    def record_disconnected(self, session_id: str, reason: str) -> None:
        m = self.models[session_id]
        applies = m.running and m.status in ("connecting", "connected")
        uuid = self.uuid(session_id)
        if self.run(applies, lambda: self.app.record_disconnected(uuid, reason)):
            m.status, m.reason, m.degraded = "disconnected", reason, False
            m.attempt += 1

    @rule(session_id=sessions)
    def retry(self, session_id: str) -> None:
        m = self.models[session_id]
        applies = m.running and m.status == "disconnected"
        uuid = self.uuid(session_id)
        before = head(self.app)
        planned = self.app.retry(uuid)
        assert (planned is not None) == applies
        assert (head(self.app) > before) == applies
        if applies:
            m.status = "connecting"

    @rule(session_id=sessions, healthy=st.booleans())
    def keepalive(self, session_id: str, healthy: bool) -> None:
        m = self.models[session_id]
        applies = m.running and m.status == "connected" and m.degraded == healthy
        uuid = self.uuid(session_id)
        if self.run(applies, lambda: self.app.record_keepalive(uuid, healthy)):
            m.degraded = not healthy

    @rule(session_id=sessions, attempt=st.integers(1, 6))
    def record_qr(self, session_id: str, attempt: int) -> None:
        m = self.models[session_id]
        applies = m.running and m.status == "connecting"
        uuid = self.uuid(session_id)
        self.run(applies, lambda: self.app.record_qr(uuid, f"2@{attempt}", LATER, attempt, 6))

    @rule(session_id=sessions)
    def record_qr_expired(self, session_id: str) -> None:
        m = self.models[session_id]
        applies = m.running and m.status == "connecting"
        uuid = self.uuid(session_id)
        if self.run(applies, lambda: self.app.record_qr_expired(uuid)):
            m.status, m.reason = "expired", "qr_expired"
            m.attempt, m.degraded = 0, False

    # -- invariants -----------------------------------------------------------------------

    def replay_log(self) -> dict[UUID, Session]:
        """Every session folded from the whole notification log, decoded by our own mapper."""
        sessions: dict[UUID, Session] = {}
        for notification in self.app.recorder.select_notifications(start=1, limit=100_000):
            event: Any = self.mapper.to_domain_event(notification)
            sessions[event.originator_id] = event.mutate(sessions.get(event.originator_id))
        return sessions

    @invariant()
    def every_session_agrees_with_the_model_its_events_and_its_rows(self) -> None:
        catch_up(self.app, self.status, self.keys, self.gateway)
        from_log = self.replay_log()
        assert len(from_log) == len(self.models)
        for session_id, m in self.models.items():
            session = self.app.load(session_id)

            # Check the state is one the model expects, and the invariants hold.
            assert session.status in STATUSES
            assert (session.status, session.reason, session.desired) == (
                m.status,
                m.reason,
                m.desired,
            )
            if session.is_stopped:
                assert (session.status, session.reason) == ("disconnected", "stopped")
            if session.is_deleted:
                assert not any(k.is_active for k in session.keys.values())
            assert {k.key_id: k.is_active for k in session.keys.values()} == m.keys
            for key in session.keys.values():
                assert key.scopes == m.scopes.get(key.key_id), key
                assert key.expires_at == m.expiries.get(key.key_id), key
            assert session.requests_per_minute == m.requests_per_minute

            # Check replaying the recorded events rebuilds the same state, twice over.
            assert vars(replay(self.app.events.get(session.id))) == vars(session)
            assert vars(from_log[session.id]) == vars(session)

            # Check the status row built from the log agrees with the aggregate.
            row = self.status.view.get_session(session_id)
            assert row is not None
            assert (row.status, row.reason, row.desired) == (
                session.status,
                session.reason,
                session.desired,
            )
            assert (row.connected_at is not None) == (session.status == "connected")
            assert row.requests_per_minute == session.requests_per_minute
            assert (row.qr_code, row.qr_attempt) == (session.qr_code, session.qr_attempt)
            assert (row.retry_attempt, row.next_retry_at, row.degraded) == (
                session.retry_attempt,
                session.next_retry_at,
                session.degraded,
            )
            if session.status in ("disconnected", "connecting"):
                assert session.retry_attempt == m.attempt
            assert session.degraded == m.degraded

            # Check the gateway view wants what the session wants, with its retry deadline.
            wanted = self.gateway.view.row(session.id)
            assert wanted is not None and wanted.desired == session.desired
            deadlines = {d.kind: d.due_at for d in self.gateway.view.deadlines(session.id)}
            if session.status == "disconnected" and session.next_retry_at is not None:
                assert deadlines.get("retry") == session.next_retry_at
            else:
                assert "retry" not in deadlines
            assert ("logout" in deadlines) == session.is_deleted

            # Check the queue, its order and the message counters, in the session and rows.
            assert [q.message_id for q in session.outbox.queue] == m.queue
            assert row.queue_depth == len(m.queue) == wanted.queued
            for counter in (
                "messages_sent",
                "messages_failed",
                "messages_delivered",
                "messages_read",
                "messages_received",
            ):
                assert getattr(row, counter) == m.counts.get(counter, 0), counter
            if m.queue and not session.is_deleted:
                assert "send" in deadlines
            if session.is_deleted:
                assert "send" not in deadlines

            # Check the key rows built from the log agree with the aggregate.
            key_rows = {
                r.key_id: r.is_active
                for r in self.keys.view.all_keys()
                if r.session_id == session_id
            }
            assert key_rows == m.keys
            for r in self.keys.view.all_keys():
                if r.session_id == session_id:
                    assert (r.scopes, r.expires_at) == (
                        m.scopes.get(r.key_id),
                        m.expiries.get(r.key_id),
                    )
                    assert (r.expired_at is not None) == session.keys[r.key_id].expired

        last = head(self.app)
        assert self.status.view.max_tracking_id(self.app.name) == (last or None)
        assert self.keys.view.max_tracking_id(self.app.name) == (last or None)


class FrequentSnapshots(SessionsApplication):
    """Snapshots every third version, so most loads go through a snapshot."""

    name = "sessiond"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Session: 3}


class SnapshottingSessionsMachine(SessionsMachine):
    app_class = FrequentSnapshots


FAST = settings(max_examples=60, stateful_step_count=30, deadline=None, database=None)

TestSessionsStateMachine = SessionsMachine.TestCase
TestSessionsStateMachine.settings = FAST

TestSessionsStateMachineWithFrequentSnapshots = SnapshottingSessionsMachine.TestCase
TestSessionsStateMachineWithFrequentSnapshots.settings = FAST
