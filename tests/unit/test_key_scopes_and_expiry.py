"""Scoped, expiring keys in the domain, the application and the key view: what a key may be
given, that it never gives more than it holds, and that its expiry is recorded once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from domain.access import SCOPES, ExceedsIssuer, allows, check_grant, check_scopes
from domain.errors import CapReached, InvalidValue
from domain.session import Session
from domain.values import ADMIN_ACTOR, key_actor, key_id_of
from infra.runtime.keyexpiry import BATCH, KeyExpiry
from projections.keys import ApiKeyProjection, MemoryApiKeyView
from tests.unit.helpers import catch_up, popo_app

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def new_session() -> Session:
    return Session(
        id=uuid4(), name="Scopes", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
    )


def issue(
    session: Session,
    key_id: str,
    actor: str = ADMIN_ACTOR,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> None:
    session.issue_key(
        key_id, "sdk_12345678", f"hash-{key_id}", key_id, actor,
        scopes=scopes, expires_at=expires_at, now=NOW,
    )  # fmt: skip


def test_scopes_are_checked_deduplicated_and_kept_in_a_stable_order() -> None:
    assert check_scopes(["messages:send", "status:read", "status:read"]) == [
        "status:read",
        "messages:send",
    ]
    assert check_scopes(reversed(SCOPES)) == list(SCOPES)
    with pytest.raises(InvalidValue, match=r"unknown scope messages:delete; the scopes are"):
        check_scopes(["status:read", "messages:delete"])
    with pytest.raises(InvalidValue, match="at least one scope"):
        check_scopes([])
    assert allows(None, "keys:manage") and allows(["keys:manage"], "keys:manage")
    assert not allows(["status:read"], "messages:send")


def test_a_session_keeps_a_keys_scopes_checked_and_in_order() -> None:
    session = new_session()
    issue(session, "key_a", scopes=["messages:send", "status:read", "messages:send"])
    assert session.keys["key_a"].scopes == ["status:read", "messages:send"]
    for wrong in (["status:write"], []):
        with pytest.raises(InvalidValue):
            issue(session, "key_b", scopes=wrong)
    assert "key_b" not in session.keys


def test_the_actor_of_a_key_names_it_and_the_admin_names_none() -> None:
    assert key_id_of(key_actor("key_0123456789abcdef")) == "key_0123456789abcdef"
    assert key_id_of(ADMIN_ACTOR) is None
    assert key_id_of("gateway") is None


def test_a_scoped_key_never_creates_a_key_with_a_scope_it_lacks_or_full_access() -> None:
    session = new_session()
    issue(session, "key_a", scopes=["status:read", "keys:manage"])
    scoped = key_actor("key_a")

    # Check a subset of its scopes is given, and recorded with the key.
    issue(session, "key_b", scopes=["status:read"], actor=scoped)
    assert session.keys["key_b"].scopes == ["status:read"]

    # Check a scope it lacks, and full access (no scopes), are refused, naming what exceeds.
    with pytest.raises(ExceedsIssuer, match="lacks the scope messages:send"):
        issue(session, "key_c", scopes=["status:read", "messages:send"], actor=scoped)
    with pytest.raises(ExceedsIssuer, match="full access"):
        issue(session, "key_c", actor=scoped)
    assert "key_c" not in session.keys

    # Check a key with full access, and the admin, give any scopes and full access.
    issue(session, "key_full")
    issue(session, "key_d", actor=key_actor("key_full"))
    issue(session, "key_e", scopes=["webhooks:manage"], actor=key_actor("key_full"))
    assert session.keys["key_d"].scopes is None
    assert session.keys["key_e"].scopes == ["webhooks:manage"]


def test_an_expiring_key_never_creates_a_key_that_outlives_it() -> None:
    session = new_session()
    issue(session, "key_a", expires_at=NOW + HOUR)
    expiring = key_actor("key_a")

    issue(session, "key_b", expires_at=NOW + HOUR, actor=expiring)
    issue(session, "key_c", expires_at=NOW + timedelta(minutes=5), actor=expiring)
    with pytest.raises(ExceedsIssuer, match="never expires"):
        issue(session, "key_x", actor=expiring)
    with pytest.raises(ExceedsIssuer, match="expires later"):
        issue(session, "key_x", expires_at=NOW + HOUR + timedelta(seconds=1), actor=expiring)
    assert "key_x" not in session.keys
    # Check the admin gives any expiry, and none.
    issue(session, "key_d", expires_at=NOW + 100 * HOUR)
    issue(session, "key_e")


def test_the_grant_rule_compares_scopes_and_expiry_together() -> None:
    check_grant(None, None, None, None)
    check_grant(["status:read"], NOW, ["status:read"], NOW)
    with pytest.raises(ExceedsIssuer):
        check_grant(["status:read"], NOW, ["status:read"], None)
    with pytest.raises(ExceedsIssuer):
        check_grant(["status:read"], None, ["status:read", "keys:manage"], NOW)


def test_an_expiry_that_is_not_in_the_future_is_refused() -> None:
    session = new_session()
    for when in (NOW, NOW - HOUR):
        with pytest.raises(InvalidValue, match="not in the future"):
            issue(session, "key_a", expires_at=when)
    assert session.keys == {}


def test_expiry_is_recorded_once_for_active_keys_whose_time_has_come() -> None:
    session = new_session()
    issue(session, "key_soon", expires_at=NOW + HOUR)
    issue(session, "key_later", expires_at=NOW + 2 * HOUR)
    issue(session, "key_never")
    issue(session, "key_revoked", expires_at=NOW + HOUR)
    session.revoke_key("key_revoked", ADMIN_ACTOR)
    session.collect_events()

    # Check nothing is due before its time, and the key works until then (not at it).
    assert session.expire_keys(NOW + HOUR - timedelta(microseconds=1)) == []
    assert session.keys["key_soon"].is_usable_at(NOW + HOUR - timedelta(microseconds=1))
    assert not session.keys["key_soon"].is_usable_at(NOW + HOUR)

    # Check its time come, only the active key due is recorded, with its expiry; once.
    assert session.expire_keys(NOW + HOUR) == ["key_soon"]
    (expired,) = session.collect_events()
    assert isinstance(expired, Session.ApiKeyExpired)
    assert (expired.key_id, expired.expires_at) == ("key_soon", NOW + HOUR)
    assert session.keys["key_soon"].expired and not session.keys["key_soon"].is_active
    assert session.expire_keys(NOW + HOUR) == []
    assert session.pending_events == []
    # Check revoking an expired key records nothing more.
    assert session.revoke_key("key_soon", ADMIN_ACTOR) is False


def test_keys_past_their_expiry_do_not_count_against_the_cap() -> None:
    session = new_session()
    issue(session, "key_a", expires_at=NOW + HOUR)
    issue(session, "key_b")
    with pytest.raises(CapReached):
        session.check_key_cap(2, NOW)
    session.check_key_cap(2, NOW + HOUR)  # key_a is past its expiry, recorded or not


def test_the_application_issues_scoped_keys_and_records_expiries_the_key_view_shows() -> None:
    app = popo_app()
    keys = ApiKeyProjection(MemoryApiKeyView())
    created = app.create_session("Scopes", {}, None, ADMIN_ACTOR)
    sid = created.session_id
    soon = datetime.now(UTC) + timedelta(seconds=30)
    issued = app.issue_key(sid, "reader", ADMIN_ACTOR, scopes=["status:read"], expires_at=soon)
    assert (issued.scopes, issued.expires_at) == (["status:read"], soon)
    catch_up(app, keys)

    # Check the key view has its scopes and expiry, and says when it stops being usable.
    row = keys.view.get_key(issued.key_id)
    assert row is not None
    assert (row.scopes, row.expires_at, row.expired_at) == (["status:read"], soon, None)
    assert row.is_usable_at(soon - timedelta(seconds=1)) and not row.is_usable_at(soon)
    first = keys.view.get_key(created.first_key.key_id)
    assert first is not None and first.scopes is None and first.expires_at is None

    # Check nothing is recorded before the time, then ApiKeyExpired once, shown by the view.
    assert app.expire_keys(sid, soon - timedelta(seconds=1)) is None
    position = app.expire_keys(sid, soon)
    assert position is not None
    assert app.expire_keys(sid, soon) is None
    catch_up(app, keys)
    row = keys.view.get_key(issued.key_id)
    assert row is not None and row.expired_at is not None and not row.is_active

    # Check a scoped key's own request cannot widen what it gives.
    with pytest.raises(ExceedsIssuer):
        app.issue_key(sid, "wider", key_actor(issued.key_id), scopes=["messages:send"])

    # Check a deleted session's expiries are nothing to record.
    app.delete(sid, ADMIN_ACTOR)
    assert app.expire_keys(sid, soon + HOUR) is None


def test_the_workers_expiry_tick_records_each_due_session_once_and_skips_deleted_ones() -> None:
    app = popo_app()
    soon = datetime.now(UTC) + timedelta(seconds=30)
    sessions = [app.create_session(name, {}, None, ADMIN_ACTOR).session_id for name in "ABC"]
    due: list[tuple[str, str]] = []
    for sid in sessions:
        for label in ("one", "two"):
            issued = app.issue_key(sid, label, ADMIN_ACTOR, expires_at=soon)
            due.append((sid, issued.key_id))
    app.delete(sessions[2], ADMIN_ACTOR)
    asked: list[tuple[datetime, int]] = []

    def due_at(now: datetime, limit: int) -> list[tuple[str, str]]:
        asked.append((now, limit))
        return due if now >= soon else []

    clock = [soon - timedelta(seconds=1)]
    expiry = KeyExpiry(app, due_at, clock=lambda: clock[0])
    # Check nothing is recorded before the keys' time (the view says none is due).
    assert expiry.key_expiry_tick() == 0
    # Check at their time both live sessions record their two expiries; the deleted one none.
    clock[0] = soon
    position = app.recorder.max_notification_id()
    assert expiry.key_expiry_tick() == 2
    recorded = app.recorder.select_notifications(start=(position or 0) + 1, limit=100)
    assert [n.topic for n in recorded] == ["sessiond:Session.ApiKeyExpired"] * 4
    # Check a second tick (the view not caught up yet) records nothing again.
    assert expiry.key_expiry_tick() == 0
    assert [now for now, _ in asked] == [soon - timedelta(seconds=1), soon, soon]
    assert all(limit == BATCH for _, limit in asked)
