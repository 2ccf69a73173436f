"""The `Session` aggregate on its own: transitions, invariants, events and their topics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.utils import get_topic, resolve_topic

from domain.errors import (
    AlreadyStopped,
    InvalidTransition,
    InvalidValue,
    SessionIsDeleted,
    UnknownApiKey,
)
from domain.session import ApiKey, Session
from domain.values import (
    ADMIN_ACTOR,
    MAX_REQUESTS_PER_MINUTE,
    DesiredState,
    Reason,
    Status,
    key_actor,
)
from tests.unit.helpers import event_names

LATER = datetime(2030, 1, 1, tzinfo=UTC)
JID = "4915112345678:1@s.whatsapp.net"


def new_session(actor: str = ADMIN_ACTOR) -> Session:
    """A fresh session whose creation event has already been collected."""
    session = Session(
        id=uuid4(), name="Support", labels={"team": "eu"}, requests_per_minute=None, actor=actor
    )
    session.collect_events()
    return session


def connected_session() -> Session:
    session = new_session()
    session.connect(JID, "Support Phone")
    session.collect_events()
    return session


def disconnected_session() -> Session:
    session = connected_session()
    session.disconnect(Reason.CONNECTION_LOST)
    session.collect_events()
    return session


def expired_session() -> Session:
    session = new_session()
    session.expire_qr()
    session.collect_events()
    return session


def stopped_session() -> Session:
    session = connected_session()
    session.stop(ADMIN_ACTOR)
    session.collect_events()
    return session


def deleted_session() -> Session:
    session = new_session()
    session.issue_key("key_1", "sdk_12345678", "hash1", "default", ADMIN_ACTOR)
    session.delete(ADMIN_ACTOR)
    session.collect_events()
    return session


def assert_refused(
    session: Session, error: type[Exception], command: Callable[[Session], object]
) -> None:
    """`command` on `session` raises `error` and records nothing."""
    with pytest.raises(error):
        command(session)
    assert session.pending_events == []


def nested_event_classes() -> dict[str, type[CanMutateAggregate[Any]]]:
    return {
        name: value
        for name, value in vars(Session).items()
        if isinstance(value, type) and issubclass(value, CanMutateAggregate)
    }


# -- statuses -------------------------------------------------------------------------------


def test_the_statuses_are_exactly_connecting_connected_disconnected_and_expired() -> None:
    assert {s.value for s in Status} == {"connecting", "connected", "disconnected", "expired"}
    assert {d.value for d in DesiredState} == {"running", "stopped", "deleted"}


def test_a_new_session_is_connecting_and_meant_to_be_running() -> None:
    session = Session(
        id=uuid4(), name="Support", labels={"team": "eu"}, requests_per_minute=None, actor="admin"
    )
    assert (session.status, session.reason, session.desired) == ("connecting", None, "running")
    assert session.qr_code is None
    assert session.keys == {}
    assert event_names(session) == ["Created"]


def test_a_session_goes_through_every_status_and_each_is_a_plain_string() -> None:
    session = new_session()

    # Check a QR code is shown while connecting, without changing the status.
    session.issue_qr("2@abc", LATER, attempt=1, max_attempts=6)
    assert session.status == "connecting"
    assert (session.qr_code, session.qr_expires_at) == ("2@abc", LATER)
    assert (session.qr_attempt, session.qr_max_attempts) == (1, 6)

    # Check the scan connects it and clears the QR code.
    session.connect(JID, "Support Phone")
    assert session.status == "connected"
    assert (session.jid, session.push_name) == (JID, "Support Phone")
    assert (session.qr_code, session.qr_expires_at, session.qr_attempt) == (None, None, 0)

    # Check a lost connection disconnects it with the gateway's reason.
    session.disconnect("connection_lost")
    assert (session.status, session.reason) == ("disconnected", "connection_lost")

    # Check a reconnect goes back to connecting, and unanswered QR codes expire it.
    session.request_reconnect(ADMIN_ACTOR)
    assert (session.status, session.reason) == ("connecting", None)
    session.expire_qr()
    assert (session.status, session.reason) == ("expired", "qr_expired")

    assert event_names(session) == [
        "QRIssued",
        "Connected",
        "Disconnected",
        "ReconnectRequested",
        "QRExpired",
    ]
    assert type(session.status) is str


def test_a_linked_device_may_connect_again_after_a_disconnection() -> None:
    session = disconnected_session()
    session.connect(JID, "Support Phone")
    assert session.status == "connected"


@pytest.mark.parametrize("make", [connected_session, expired_session])
def test_only_a_connecting_or_disconnected_session_can_connect(
    make: Callable[[], Session],
) -> None:
    assert_refused(make(), InvalidTransition, lambda s: s.connect(JID, "Support Phone"))


# -- stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [new_session, connected_session, disconnected_session, expired_session]
)
def test_stopping_a_session_disconnects_it_with_reason_stopped(
    make: Callable[[], Session],
) -> None:
    session = make()
    session.stop(ADMIN_ACTOR)
    assert (session.status, session.reason, session.desired) == (
        "disconnected",
        "stopped",
        "stopped",
    )
    assert session.is_stopped
    assert session.qr_code is None
    assert event_names(session) == ["Stopped"]


def test_stopping_a_stopped_session_raises_already_stopped_and_records_nothing() -> None:
    assert_refused(stopped_session(), AlreadyStopped, lambda s: s.stop(ADMIN_ACTOR))
    assert issubclass(AlreadyStopped, InvalidTransition)


@pytest.mark.parametrize(
    "report",
    [
        lambda s: s.issue_qr("2@abc", LATER, 1, 6),
        lambda s: s.connect(JID, "Support Phone"),
        lambda s: s.disconnect("connection_lost"),
        lambda s: s.expire_qr(),
    ],
    ids=["issue_qr", "connect", "disconnect", "expire_qr"],
)
def test_a_stopped_session_refuses_what_the_gateway_reports(
    report: Callable[[Session], None],
) -> None:
    assert_refused(stopped_session(), InvalidTransition, report)


# -- reconnect ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [disconnected_session, expired_session, stopped_session])
def test_reconnect_is_allowed_from_disconnected_expired_and_stopped(
    make: Callable[[], Session],
) -> None:
    session = make()
    session.request_reconnect(key_actor("key_1"))
    assert (session.status, session.reason, session.desired) == ("connecting", None, "running")
    assert event_names(session) == ["ReconnectRequested"]


@pytest.mark.parametrize("make", [new_session, connected_session])
def test_reconnect_is_refused_from_connecting_and_connected(make: Callable[[], Session]) -> None:
    assert_refused(make(), InvalidTransition, lambda s: s.request_reconnect(ADMIN_ACTOR))


# -- delete ---------------------------------------------------------------------------------


COMMANDS: dict[str, Callable[[Session], object]] = {
    "issue_qr": lambda s: s.issue_qr("2@abc", LATER, 1, 6),
    "connect": lambda s: s.connect(JID, "Support Phone"),
    "disconnect": lambda s: s.disconnect("connection_lost"),
    "expire_qr": lambda s: s.expire_qr(),
    "request_reconnect": lambda s: s.request_reconnect(ADMIN_ACTOR),
    "stop": lambda s: s.stop(ADMIN_ACTOR),
    "delete": lambda s: s.delete(ADMIN_ACTOR),
    "issue_key": lambda s: s.issue_key("key_2", "sdk_abcdefgh", "hash2", "ci", ADMIN_ACTOR),
    "revoke_key": lambda s: s.revoke_key("key_1", ADMIN_ACTOR),
    "revoke_unknown_key": lambda s: s.revoke_key("key_404", ADMIN_ACTOR),
    "set_rate_limit": lambda s: s.set_rate_limit(60, ADMIN_ACTOR),
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_every_command_on_a_deleted_session_raises_session_is_deleted(
    command: Callable[[Session], object],
) -> None:
    assert_refused(deleted_session(), SessionIsDeleted, command)


def test_deleting_records_deleted_and_keys_revoked_together_and_revokes_only_active_keys() -> None:
    session = new_session()
    for n in (1, 2, 3):
        session.issue_key(f"key_{n}", f"sdk_prefix{n}xx", f"hash{n}", f"label{n}", ADMIN_ACTOR)
    session.revoke_key("key_2", ADMIN_ACTOR)
    session.collect_events()
    assert session.keys["key_2"].revoked

    session.delete(key_actor("key_1"))

    # Check one batch of pending events holds both, so one save records both or neither.
    deleted, revoked = session.collect_events()
    assert isinstance(deleted, Session.Deleted)
    assert isinstance(revoked, Session.KeysRevoked)
    assert revoked.originator_version == deleted.originator_version + 1

    # Check only the keys still active are named, and every key is now inactive.
    assert revoked.key_ids == ["key_1", "key_3"]
    assert not any(key.is_active for key in session.keys.values())

    # Check the session reads as deleted.
    assert (session.status, session.reason, session.desired) == (
        "disconnected",
        "deleted",
        "deleted",
    )
    assert session.is_deleted


def test_deleting_a_session_without_active_keys_still_records_an_empty_revocation() -> None:
    session = new_session()
    session.delete(ADMIN_ACTOR)
    deleted, revoked = session.collect_events()
    assert isinstance(deleted, Session.Deleted)
    assert isinstance(revoked, Session.KeysRevoked)
    assert revoked.key_ids == []


# -- QR codes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "max_attempts"), [(0, 6), (-1, 6), (7, 6), (1, 0), (2, 1)])
def test_a_qr_attempt_outside_one_to_max_raises_invalid_value(
    attempt: int, max_attempts: int
) -> None:
    assert_refused(
        new_session(), InvalidValue, lambda s: s.issue_qr("2@abc", LATER, attempt, max_attempts)
    )


@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 1), (1, 6), (6, 6)])
def test_a_qr_attempt_within_one_to_max_is_recorded(attempt: int, max_attempts: int) -> None:
    session = new_session()
    session.issue_qr("2@abc", LATER, attempt, max_attempts)
    (issued,) = session.collect_events()
    assert isinstance(issued, Session.QRIssued)
    assert (issued.code, issued.expires_at, issued.attempt, issued.max_attempts) == (
        "2@abc",
        LATER,
        attempt,
        max_attempts,
    )


@pytest.mark.parametrize("make", [connected_session, disconnected_session, expired_session])
def test_a_qr_code_is_only_shown_while_connecting(make: Callable[[], Session]) -> None:
    session = make()
    with pytest.raises(InvalidTransition):
        session.issue_qr("2@abc", LATER, 1, 6)


# -- rate limit -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 60, MAX_REQUESTS_PER_MINUTE, None])
def test_a_rate_limit_from_one_to_the_maximum_or_none_is_accepted(limit: int | None) -> None:
    session = new_session()
    session.set_rate_limit(limit, ADMIN_ACTOR)
    assert session.requests_per_minute == limit
    assert event_names(session) == ["RateLimitSet"]


@pytest.mark.parametrize("limit", [0, -1, MAX_REQUESTS_PER_MINUTE + 1])
def test_a_rate_limit_out_of_bounds_raises_invalid_value(limit: int) -> None:
    assert_refused(new_session(), InvalidValue, lambda s: s.set_rate_limit(limit, ADMIN_ACTOR))


# -- keys -----------------------------------------------------------------------------------


def test_a_key_id_can_be_issued_only_once() -> None:
    session = new_session()
    session.issue_key("key_1", "sdk_12345678", "hash1", "default", ADMIN_ACTOR)
    with pytest.raises(InvalidValue):
        session.issue_key("key_1", "sdk_87654321", "hash2", "other", ADMIN_ACTOR)


def test_revoking_a_revoked_key_changes_nothing_and_an_unknown_key_is_an_error() -> None:
    session = new_session()
    session.issue_key("key_1", "sdk_12345678", "hash1", "default", ADMIN_ACTOR)
    assert session.revoke_key("key_1", ADMIN_ACTOR) is True
    session.collect_events()
    assert session.revoke_key("key_1", ADMIN_ACTOR) is False
    assert session.pending_events == []
    with pytest.raises(UnknownApiKey):
        session.revoke_key("key_404", ADMIN_ACTOR)


def test_a_key_keeps_only_its_hash() -> None:
    field_names = {f.name for f in dataclasses.fields(ApiKey)}
    assert field_names == {
        "key_id",
        "prefix",
        "key_hash",
        "label",
        "revoked",
        "scopes",
        "expires_at",
        "expired",
    }
    issued_fields = {f.name for f in dataclasses.fields(Session.ApiKeyIssued)}
    assert "key" not in issued_fields
    assert "key_hash" in issued_fields


# -- events ---------------------------------------------------------------------------------


def test_every_nested_event_class_declares_its_own_explicit_topic() -> None:
    # `@event(Class)` replaces each decorated class by a subclass of the same name, which
    # inherits TOPIC; what matters is that the class *declared* under that name sets it in its
    # own __dict__ (not inherited from `Session.Event`) and that it resolves to the event class.
    classes = nested_event_classes()
    assert set(classes) == {
        "Event",
        "Created",
        "QRIssued",
        "Connected",
        "Disconnected",
        "QRExpired",
        "ReconnectRequested",
        "Stopped",
        "Deleted",
        "KeysRevoked",
        "ApiKeyIssued",
        "ApiKeyRevoked",
        "ApiKeyExpired",
        "RateLimitSet",
        "ReconnectAttempted",
        "KeepAliveLost",
        "KeepAliveRestored",
        "MessageQueued",
        "MessageSent",
        "MessageDelivered",
        "MessageRead",
        "MessageFailed",
        "MessageReceived",
        "ProxySet",
        "ProxyCleared",
        "Restricted",
        "RestrictionLifted",
        "SessionImported",
        "SessionExported",
        "SendingSet",
        "Silenced",
        "SilenceEnded",
    }
    for name, cls in classes.items():
        declaring = next(k for k in cls.__mro__ if "TOPIC" in k.__dict__)
        assert declaring.__name__ == name, f"{name} inherits its topic from {declaring}"
        topic = declaring.__dict__["TOPIC"]
        assert topic == f"sessiond:Session.{name}"
        assert get_topic(cls) == topic
        assert resolve_topic(topic) is cls
    assert Session.__dict__["TOPIC"] == "sessiond:Session"


def test_event_topics_are_unique() -> None:
    topics = [get_topic(cls) for cls in nested_event_classes().values()]
    assert len(topics) == len(set(topics))
    assert get_topic(Session) not in topics


def test_the_topic_of_a_recorded_event_is_the_explicit_one() -> None:
    session = new_session()
    session.stop(ADMIN_ACTOR)
    (stopped,) = session.collect_events()
    assert get_topic(type(stopped)) == "sessiond:Session.Stopped"


def test_events_made_by_a_request_carry_the_actor() -> None:
    actor = key_actor("key_7")
    session = Session(
        id=uuid4(), name="Support", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
    )
    session.issue_key("key_7", "sdk_12345678", "hash7", "default", actor)
    session.issue_key("key_8", "sdk_87654321", "hash8", "other", actor)
    session.revoke_key("key_8", actor)
    session.set_rate_limit(120, actor)
    session.stop(actor)
    session.request_reconnect(actor)
    session.delete(actor)

    events = session.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Created",
        "ApiKeyIssued",
        "ApiKeyIssued",
        "ApiKeyRevoked",
        "RateLimitSet",
        "Stopped",
        "ReconnectRequested",
        "Deleted",
        "KeysRevoked",
    ]
    assert [getattr(e, "actor", None) for e in events] == [ADMIN_ACTOR] + [actor] * 8
    assert session.created_by == ADMIN_ACTOR


def test_events_the_gateway_reports_carry_no_actor() -> None:
    for cls in (Session.QRIssued, Session.Connected, Session.Disconnected, Session.QRExpired):
        assert "actor" not in {f.name for f in dataclasses.fields(cls)}


def test_a_refused_command_leaves_the_session_unchanged() -> None:
    session = connected_session()
    before = dict(vars(session))
    with pytest.raises(InvalidTransition):
        session.request_reconnect(ADMIN_ACTOR)
    with pytest.raises(InvalidValue):
        session.set_rate_limit(0, ADMIN_ACTOR)
    assert vars(session) == before
