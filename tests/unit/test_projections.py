"""The status and key projections fed from an in-memory log, and the uptime arithmetic."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from eventsourcing.persistence import Tracking

from application.keys import hash_key
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import ADMIN_ACTOR, public_session_id
from projections.keys import ApiKeyProjection, KeyRow, MemoryApiKeyView
from projections.status import (
    MemorySessionStatusView,
    SessionRow,
    SessionStatusProjection,
    status_uptime,
    window_start,
)
from projections.uptime import uptime_percent
from tests.unit.helpers import catch_up, head, popo_app

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2030, 1, 1, tzinfo=UTC)
JID = "4915112345678:1@s.whatsapp.net"


class Projected:
    """An application with both projections, fed one step at a time."""

    def __init__(self) -> None:
        self.app: SessionsApplication = popo_app()
        self.status = SessionStatusProjection(MemorySessionStatusView())
        self.keys = ApiKeyProjection(MemoryApiKeyView())

    def step(self) -> None:
        """Feed the new events to both projections; check each tracked every one of them."""
        catch_up(self.app, self.status, self.keys)
        last = head(self.app)
        assert self.status.view.max_tracking_id(self.app.name) == last
        assert self.keys.view.max_tracking_id(self.app.name) == last

    def row(self, session_id: str) -> SessionRow:
        row = self.status.view.get_session(session_id)
        assert row is not None
        return row

    def lifecycle(self, session_id: str) -> tuple[Any, ...]:
        """The session's status, reason, desired state and connection time."""
        row = self.row(session_id)
        return (row.status, row.reason, row.desired, row.connected_at)

    def key(self, key_id: str) -> KeyRow:
        row = self.keys.view.get_key(key_id)
        assert row is not None
        return row

    def last_event(self) -> Any:
        (notification,) = self.app.recorder.select_notifications(start=head(self.app), limit=1)
        return self.app.mapper.to_domain_event(notification)


@pytest.fixture
def p() -> Projected:
    return Projected()


def test_the_status_row_follows_every_kind_of_event(p: Projected) -> None:
    app = p.app
    created = app.create_session("Support", {"team": "eu"}, None, ADMIN_ACTOR)
    sid = created.session_id
    uuid = app.load(sid).id
    p.step()

    # Check a new session: connecting, running, created and marked at its Created event.
    row = p.row(sid)
    created_event: Any = next(iter(app.events.get(uuid)))
    assert (row.name, row.labels) == ("Support", {"team": "eu"})
    assert (row.status, row.reason, row.desired) == ("connecting", None, "running")
    assert row.created_at == row.marked_at == created_event.timestamp
    assert row.connected_at is None
    # The last event of the create is ApiKeyIssued, which the status view tracks but ignores.
    assert (row.version, row.position) == (1, 1)

    # Check a QR code fills the QR fields and leaves the status.
    app.record_qr(uuid, "2@abc", LATER, 2, 6)
    p.step()
    row = p.row(sid)
    assert (row.qr_code, row.qr_expires_at, row.qr_attempt, row.qr_max_attempts) == (
        "2@abc",
        LATER,
        2,
        6,
    )
    assert row.status == "connecting"
    assert (row.version, row.position) == (3, head(app))

    # Check the scan connects it at the time of the Connected event and clears the QR code.
    app.record_connected(uuid, JID, "Support Phone")
    p.step()
    row = p.row(sid)
    assert (row.status, row.reason, row.jid, row.push_name) == (
        "connected",
        None,
        JID,
        "Support Phone",
    )
    assert row.connected_at == p.last_event().timestamp
    assert (row.qr_code, row.qr_expires_at, row.qr_attempt, row.qr_max_attempts) == (
        None,
        None,
        0,
        0,
    )

    # Check a lost connection: disconnected with the gateway's reason, no connected_at.
    app.record_disconnected(uuid, "connection_lost")
    p.step()
    assert p.lifecycle(sid) == ("disconnected", "connection_lost", "running", None)

    # Check reconnect, then QR codes running out: expired with reason qr_expired.
    app.reconnect(sid, ADMIN_ACTOR)
    p.step()
    assert (p.row(sid).status, p.row(sid).reason) == ("connecting", None)
    app.record_qr(uuid, "2@def", LATER, 6, 6)
    app.record_qr_expired(uuid)
    p.step()
    row = p.row(sid)
    assert (row.status, row.reason, row.qr_code, row.qr_attempt) == (
        "expired",
        "qr_expired",
        None,
        0,
    )

    # Check a rate limit is copied.
    app.set_rate_limit(sid, 90, ADMIN_ACTOR)
    p.step()
    assert p.row(sid).requests_per_minute == 90

    # Check stop: disconnected, reason stopped, desired stopped.
    app.stop(sid, ADMIN_ACTOR)
    p.step()
    assert p.lifecycle(sid) == ("disconnected", "stopped", "stopped", None)

    # Check reconnect from stopped: connecting and running again.
    app.reconnect(sid, ADMIN_ACTOR)
    p.step()
    row = p.row(sid)
    assert (row.status, row.reason, row.desired) == ("connecting", None, "running")

    # Check delete: disconnected, reason deleted, desired deleted; the row is kept.
    app.delete(sid, ADMIN_ACTOR)
    p.step()
    row = p.row(sid)
    assert (row.status, row.reason, row.desired) == ("disconnected", "deleted", "deleted")
    assert row.is_deleted
    assert row.version == app.load(sid).version - 1  # KeysRevoked is not the status view's
    assert [r.session_id for r in p.status.view.all_sessions()] == [sid]


def test_a_rate_limit_given_at_creation_is_on_the_first_row(p: Projected) -> None:
    created = p.app.create_session("Support", {}, 45, ADMIN_ACTOR)
    p.step()
    assert p.row(created.session_id).requests_per_minute == 45


def test_tracking_advances_for_events_a_view_ignores(p: Projected) -> None:
    app = p.app
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid = created.session_id

    # Check the status view tracks ApiKeyIssued and ApiKeyRevoked without a row change.
    p.step()
    before = p.row(sid)
    issued = app.issue_key(sid, "ci", ADMIN_ACTOR)
    app.revoke_key(sid, issued.key_id, ADMIN_ACTOR)
    p.step()
    assert p.row(sid) == before

    # Check the key view tracks Stopped and ReconnectRequested without a row change.
    keys_before = p.keys.view.all_keys()
    app.stop(sid, ADMIN_ACTOR)
    app.reconnect(sid, ADMIN_ACTOR)
    p.step()
    assert p.keys.view.all_keys() == keys_before

    # Check tracking is kept per event: each view records one tracking per notification.
    for view in (p.status.view, p.keys.view):
        for position in range(1, head(app) + 1):
            assert view.has_tracking_id(app.name, position)


def test_key_rows_are_issued_revoked_and_revoked_by_delete(p: Projected) -> None:
    app = p.app
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid = created.session_id
    ci = app.issue_key(sid, "ci", ADMIN_ACTOR)
    ops = app.issue_key(sid, "ops", ADMIN_ACTOR)
    p.step()

    # Check each issued key has a row with its prefix and hash, never the key itself.
    first = p.key(created.first_key.key_id)
    assert (first.session_id, first.label, first.prefix) == (
        sid,
        "default",
        created.first_key.prefix,
    )
    assert first.key_hash == hash_key(created.first_key.key)
    assert first.is_active
    assert created.first_key.key not in repr(first)
    assert first.position == created.position
    (issued_event,) = app.events.get(app.load(sid).id, gt=1, lte=2)
    assert isinstance(issued_event, Session.ApiKeyIssued)
    assert first.created_at == issued_event.timestamp

    # Check a revoked key is marked at the time of its ApiKeyRevoked event.
    app.revoke_key(sid, ci.key_id, ADMIN_ACTOR)
    p.step()
    ci_revoked_at = p.last_event().timestamp
    assert p.key(ci.key_id).revoked_at == ci_revoked_at
    assert p.key(ops.key_id).is_active

    # Check delete revokes the keys still active, and leaves the earlier revocation alone.
    app.delete(sid, ADMIN_ACTOR)
    p.step()
    revoked_event = p.last_event()
    assert isinstance(revoked_event, Session.KeysRevoked)
    assert not any(row.is_active for row in p.keys.view.all_keys())
    assert p.key(created.first_key.key_id).revoked_at == revoked_event.timestamp
    assert p.key(ops.key_id).revoked_at == revoked_event.timestamp
    assert p.key(ci.key_id).revoked_at == ci_revoked_at
    assert p.key(ops.key_id).position == head(app)
    assert len(p.keys.view.all_keys()) == 3


def test_a_key_row_never_holds_the_plaintext_key() -> None:
    fields = set(KeyRow.__struct_fields__)
    assert "key" not in fields
    assert {"key_hash", "prefix"} <= fields


def test_projections_keep_sessions_apart(p: Projected) -> None:
    a = p.app.create_session("A", {}, None, ADMIN_ACTOR)
    b = p.app.create_session("B", {}, None, ADMIN_ACTOR)
    p.app.stop(a.session_id, ADMIN_ACTOR)
    p.app.delete(b.session_id, ADMIN_ACTOR)
    p.step()
    assert (p.row(a.session_id).desired, p.row(b.session_id).desired) == ("stopped", "deleted")
    assert p.key(a.first_key.key_id).is_active
    assert not p.key(b.first_key.key_id).is_active


def test_feeding_nothing_new_changes_nothing(p: Projected) -> None:
    p.app.create_session("Support", {}, None, ADMIN_ACTOR)
    p.step()
    assert catch_up(p.app, p.status, p.keys) == 0


# -- uptime ---------------------------------------------------------------------------------


def row(**changes: Any) -> SessionRow:
    base = SessionRow(
        session_id=public_session_id(uuid4()),
        name="Support",
        status="connecting",
        created_at=T0,
        updated_at=T0,
        marked_at=T0,
        linked_at=T0,
    )
    return msgspec.structs.replace(base, **changes)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_uptime_is_unknown_before_any_time_in_service() -> None:
    assert status_uptime(row(), T0) is None
    assert status_uptime(row(marked_at=None), at(100)) is None
    assert status_uptime(row(desired="stopped"), at(100)) is None
    assert status_uptime(row(linked_at=None, status="connected"), at(100)) is None


def test_uptime_counts_the_open_interval_while_connected() -> None:
    assert status_uptime(row(status="connected"), at(60)) == 100.0
    assert status_uptime(row(status="connecting"), at(60)) == 0.0
    assert status_uptime(row(status="disconnected"), at(60)) == 0.0


def counted(running: float, connected: float) -> dict[str, Any]:
    """Accumulators of a row: seconds in service and connected, all on T0's day."""
    return {
        "running_seconds": running,
        "connected_seconds": connected,
        "days": {T0.date().isoformat(): [running, connected]},
    }


def test_uptime_is_the_connected_share_of_the_time_in_service() -> None:
    # 100 s in service of which 50 s connected, then 100 s more: connected or not.
    assert status_uptime(row(**counted(100, 50), status="connected"), at(100)) == 75.0
    assert status_uptime(row(**counted(100, 50), status="connecting"), at(100)) == 25.0
    assert status_uptime(row(**counted(100, 50), status="expired"), at(300)) == 12.5


def test_uptime_leaves_out_the_time_a_session_is_stopped_or_deleted() -> None:
    for desired in ("stopped", "deleted"):
        stopped = row(**counted(100, 80), status="disconnected", desired=desired)
        assert status_uptime(stopped, at(10_000)) == 80.0


def test_uptime_ignores_a_reading_taken_before_the_mark() -> None:
    marked = row(**counted(100, 25), status="connected", marked_at=at(50))
    assert status_uptime(marked, at(10)) == 25.0
    assert status_uptime(marked, at(50)) == 25.0


def test_uptime_never_exceeds_100() -> None:
    inconsistent = row(**counted(10, 20), status="connected")
    assert status_uptime(inconsistent, at(10)) == 100.0


def retimed(events: Sequence[Any], offsets: list[float]) -> list[Any]:
    """The same events, stamped `offsets` seconds after T0."""
    assert len(events) == len(offsets)
    return [dataclasses.replace(e, timestamp=at(s)) for e, s in zip(events, offsets, strict=True)]


def test_the_projection_accumulates_time_in_service_from_the_first_link() -> None:
    session = Session(
        id=uuid4(), name="Support", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
    )
    session.connect(JID, "Support Phone")
    session.stop(ADMIN_ACTOR)
    session.request_reconnect(ADMIN_ACTOR)
    session.connect(JID, "Support Phone")
    session.disconnect("connection_lost")
    events = retimed(session.collect_events(), [0, 10, 40, 100, 110, 130])
    projection = SessionStatusProjection(MemorySessionStatusView())
    sid = public_session_id(session.id)

    def feed(upto: int) -> SessionRow:
        for n, event in enumerate(events[:upto], start=1):
            if not projection.view.has_tracking_id("sessiond", n):
                projection.process_event(event, Tracking("sessiond", n))
        found = projection.view.get_session(sid)
        assert found is not None
        return found

    # Check the 10 s waiting for the first scan count neither way.
    r = feed(2)
    assert (r.running_seconds, r.connected_seconds, r.marked_at) == (0, 0, at(10))
    assert r.linked_at == at(10)

    # Check 30 s connected count as both.
    r = feed(3)
    assert (r.running_seconds, r.connected_seconds, r.marked_at) == (30, 30, at(40))
    assert status_uptime(r, at(40)) == 100.0

    # Check the 60 s stopped count as neither, even read while still stopped.
    assert status_uptime(r, at(100)) == 100.0
    r = feed(4)
    assert (r.running_seconds, r.connected_seconds, r.marked_at) == (30, 30, at(100))

    # Check 10 s connecting (after the first link: downtime), then 20 s connected.
    r = feed(6)
    assert (r.running_seconds, r.connected_seconds, r.marked_at) == (60, 50, at(130))
    assert r.linked_at == at(10)
    assert status_uptime(r, at(130)) == 83.33

    # Check the open interval since the last event counts as disconnected time in service.
    assert status_uptime(r, at(200)) == uptime_percent(130, 50) == 38.46


# -- the status's uptime window: today and the 29 whole UTC days before it -------------------


def test_the_status_window_splits_the_open_interval_at_its_start() -> None:
    now = datetime(2026, 3, 31, 6, tzinfo=UTC)
    # Connected since 35 days ago, with nothing recorded since: the window (from 29 days
    # before today's midnight) is all connected; the days before it do not count.
    long_ago = now - timedelta(days=35)
    r = row(status="connected", marked_at=long_ago, days={long_ago.date().isoformat(): [1, 0]})
    assert status_uptime(r, now) == 100.0
    stopped = msgspec.structs.replace(r, status="disconnected", desired="stopped")
    assert status_uptime(stopped, now) is None
    assert window_start(now) == datetime(2026, 3, 2, tzinfo=UTC)
