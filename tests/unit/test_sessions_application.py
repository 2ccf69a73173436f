"""`SessionsApplication` commands on in-memory persistence, the reconnect policy as recorded,
the takeover decisions of a worker and the gateway projection."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Snapshot

from application.errors import SessionNotFound
from application.gateway import RecordingGatewayEvents, plan_start
from application.keys import SESSION_KEY_KIND, key_kind
from application.ports import Disconnection
from application.sessions import Resume, SessionsApplication
from domain.errors import InvalidTransition, InvalidValue, SessionIsDeleted, UnknownApiKey
from domain.policy import Hearing, ReconnectPolicy
from domain.session import ApiKey, Session
from domain.values import ADMIN_ACTOR, DeadlineKind, Reason, is_session_id, key_actor
from projections.gateway import QR_GRACE, START_TIMEOUT, GatewayProjection, MemoryGatewayView
from tests.unit.helpers import catch_up, create, head, popo_app, replay

LATER = datetime(2030, 1, 1, tzinfo=UTC)
JID = "4915112345678:1@s.whatsapp.net"


@pytest.fixture
def app() -> SessionsApplication:
    return popo_app()


# -- create ---------------------------------------------------------------------------------


def test_creating_a_session_returns_its_id_its_first_key_and_a_position(
    app: SessionsApplication,
) -> None:
    created = app.create_session("  Support  ", {"useCase": "support"}, None, ADMIN_ACTOR)

    assert is_session_id(created.session_id)
    assert created.session_id.startswith("sess_")
    assert key_kind(created.first_key.key) == SESSION_KEY_KIND
    assert created.first_key.label == "default"
    assert created.first_key.key_id.startswith("key_")
    assert created.position == created.first_key.position == head(app) == 2

    session = app.get_session(created.session_id)
    assert session.name == "Support"
    assert session.labels == {"useCase": "support"}
    assert session.requests_per_minute is None
    assert session.status == "connecting"
    assert list(session.keys) == [created.first_key.key_id]


def test_creating_a_session_with_a_rate_limit_records_it_in_the_same_save(
    app: SessionsApplication,
) -> None:
    created = app.create_session("Support", {}, 120, ADMIN_ACTOR, key_label="ops")
    events = list(app.events.get(app.load(created.session_id).id))
    assert [type(e).__name__ for e in events] == ["Created", "RateLimitSet", "ApiKeyIssued"]
    assert created.position == head(app) == 3
    assert created.first_key.label == "ops"
    assert app.get_session(created.session_id).requests_per_minute == 120


@pytest.mark.parametrize("limit", [0, -5, 100_001])
def test_creating_a_session_with_a_bad_rate_limit_records_nothing(
    app: SessionsApplication, limit: int
) -> None:
    with pytest.raises(InvalidValue):
        app.create_session("Support", {}, limit, ADMIN_ACTOR)
    assert head(app) == 0


def test_positions_increase_with_every_command(app: SessionsApplication) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid = created.session_id
    second = app.issue_key(sid, "ci", ADMIN_ACTOR)
    returned = [
        created.position,
        second.position,
        app.set_rate_limit(sid, 60, ADMIN_ACTOR),
        app.stop(sid, ADMIN_ACTOR),
        app.reconnect(sid, ADMIN_ACTOR),
        app.revoke_key(sid, second.key_id, ADMIN_ACTOR),
        app.delete(sid, ADMIN_ACTOR),
    ]
    positions = [p for p in returned if p is not None]
    assert len(positions) == len(returned)
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    # Check delete returns the position of its last event (KeysRevoked, after Deleted).
    assert positions[-1] == head(app)
    assert positions[-1] == positions[-2] + 2


def test_positions_of_different_sessions_interleave_in_one_log(app: SessionsApplication) -> None:
    a, _ = create(app, "A")
    b, _ = create(app, "B")
    pa = app.stop(a, ADMIN_ACTOR)
    pb = app.stop(b, ADMIN_ACTOR)
    assert pa is not None
    assert pb is not None
    assert pb == pa + 1 == head(app)


# -- idempotent commands --------------------------------------------------------------------


def test_stopping_twice_returns_none_the_second_time_and_records_nothing(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    first = app.stop(sid, ADMIN_ACTOR)
    assert first == head(app)

    assert app.stop(sid, key_actor("key_1")) is None
    assert head(app) == first
    session = app.get_session(sid)
    assert (session.status, session.reason, session.desired) == (
        "disconnected",
        "stopped",
        "stopped",
    )
    assert [type(e).__name__ for e in app.events.get(uuid)][-1] == "Stopped"


def test_revoking_twice_returns_none_the_second_time_and_records_nothing(
    app: SessionsApplication,
) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    key_id = created.first_key.key_id
    first = app.revoke_key(created.session_id, key_id, ADMIN_ACTOR)
    assert first == head(app)

    assert app.revoke_key(created.session_id, key_id, ADMIN_ACTOR) is None
    assert head(app) == first
    assert not app.get_session(created.session_id).keys[key_id].is_active


def test_revoking_an_unknown_key_raises_unknown_api_key(app: SessionsApplication) -> None:
    sid, _ = create(app)
    before = head(app)
    with pytest.raises(UnknownApiKey):
        app.revoke_key(sid, "key_0000000000000000", ADMIN_ACTOR)
    assert head(app) == before


def test_a_refused_command_records_nothing(app: SessionsApplication) -> None:
    sid, _ = create(app)
    before = head(app)
    with pytest.raises(InvalidTransition):
        app.reconnect(sid, ADMIN_ACTOR)
    with pytest.raises(InvalidValue):
        app.set_rate_limit(sid, 0, ADMIN_ACTOR)
    assert head(app) == before


# -- unknown, deleted and malformed sessions ------------------------------------------------


def test_an_unknown_session_raises_session_not_found(app: SessionsApplication) -> None:
    unknown = "sess_" + uuid4().hex
    with pytest.raises(SessionNotFound):
        app.get_session(unknown)
    with pytest.raises(SessionNotFound):
        app.load(unknown)
    with pytest.raises(SessionNotFound):
        app.stop(unknown, ADMIN_ACTOR)
    with pytest.raises(SessionNotFound):
        app.issue_key(unknown, "ci", ADMIN_ACTOR)
    with pytest.raises(SessionNotFound):
        app.set_rate_limit(unknown, 10, ADMIN_ACTOR)
    assert head(app) == 0


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "sess_",
        "sess_123",
        "sess_" + "A" * 32,
        "sess_" + "g" * 32,
        "sess_" + "0" * 33,
        "SESS_" + "0" * 32,
        "0" * 32,
        "6f1c2b4e-9a7d-4e3b-8c5f-1d2e3f4a5b6c",  # a UUID, not a session id
        " sess_" + "0" * 32,
        "sess_" + "0" * 32 + " ",
        "sess_" + "0" * 32 + "\r",
    ],
)
def test_a_malformed_session_id_raises_invalid_value(app: SessionsApplication, bad_id: str) -> None:
    with pytest.raises(InvalidValue):
        app.get_session(bad_id)
    with pytest.raises(InvalidValue):
        app.stop(bad_id, ADMIN_ACTOR)


def test_a_session_id_with_a_trailing_newline_raises_invalid_value(
    app: SessionsApplication,
) -> None:
    bad_id = "sess_" + "0" * 32 + "\n"
    assert not is_session_id(bad_id)
    with pytest.raises(InvalidValue):
        app.get_session(bad_id)


def test_a_deleted_session_is_not_found_but_can_still_be_loaded(app: SessionsApplication) -> None:
    sid, _ = create(app)
    app.delete(sid, ADMIN_ACTOR)
    with pytest.raises(SessionNotFound):
        app.get_session(sid)
    assert app.load(sid).is_deleted


def test_every_command_on_a_deleted_session_raises_session_is_deleted(
    app: SessionsApplication,
) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid, key_id = created.session_id, created.first_key.key_id
    app.delete(sid, ADMIN_ACTOR)
    before = head(app)
    with pytest.raises(SessionIsDeleted):
        app.stop(sid, ADMIN_ACTOR)
    with pytest.raises(SessionIsDeleted):
        app.reconnect(sid, ADMIN_ACTOR)
    with pytest.raises(SessionIsDeleted):
        app.delete(sid, ADMIN_ACTOR)
    with pytest.raises(SessionIsDeleted):
        app.issue_key(sid, "ci", ADMIN_ACTOR)
    with pytest.raises(SessionIsDeleted):
        app.revoke_key(sid, key_id, ADMIN_ACTOR)
    with pytest.raises(SessionIsDeleted):
        app.set_rate_limit(sid, 10, ADMIN_ACTOR)
    assert head(app) == before


def test_deleting_a_session_revokes_all_its_keys(app: SessionsApplication) -> None:
    created = app.create_session("Support", {}, None, ADMIN_ACTOR)
    sid = created.session_id
    app.issue_key(sid, "ci", ADMIN_ACTOR)
    app.issue_key(sid, "ops", ADMIN_ACTOR)
    app.delete(sid, ADMIN_ACTOR)
    session = app.load(sid)
    assert len(session.keys) == 3
    assert not any(key.is_active for key in session.keys.values())


# -- names and labels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("Support", "Support"),
        ("  Support  ", "Support"),
        ("\tSales EU\n", "Sales EU"),
        ("Ünïcode ☎ name", "Ünïcode ☎ name"),
        ("x" * 100, "x" * 100),
    ],
)
def test_a_name_is_trimmed_of_surrounding_space(
    app: SessionsApplication, given: str, kept: str
) -> None:
    created = app.create_session(given, {}, None, ADMIN_ACTOR)
    assert app.get_session(created.session_id).name == kept


@pytest.mark.parametrize("name", ["", "   ", "\n\t", "x" * 101, "a\nb", "bell\x07", "nul\x00"])
def test_an_unusable_name_raises_invalid_value(app: SessionsApplication, name: str) -> None:
    with pytest.raises(InvalidValue):
        app.create_session(name, {}, None, ADMIN_ACTOR)
    assert head(app) == 0


def test_labels_of_short_tokens_are_kept(app: SessionsApplication) -> None:
    labels = {"useCase": "support", "region": "eu-1", "v": "1.2_3", "k" * 63: "v" * 63}
    labels |= {f"extra{n}": "x" for n in range(16 - len(labels))}
    created = app.create_session("Support", labels, None, ADMIN_ACTOR)
    assert app.get_session(created.session_id).labels == labels


@pytest.mark.parametrize(
    "labels",
    [
        {"key": "value\n"},  # a newline at the end, which `$` alone would let through
        {"key\n": "value"},
        {"": "x"},
        {"key": ""},
        {"key": "two words"},
        {"-key": "x"},
        {"key": ".x"},
        {"k" * 64: "x"},
        {"key": "v" * 64},
        {"key/slash": "x"},
        {"key": "é"},
        {f"k{n}": "x" for n in range(17)},
    ],
)
def test_labels_that_are_not_short_tokens_raise_invalid_value(
    app: SessionsApplication, labels: dict[str, str]
) -> None:
    with pytest.raises(InvalidValue):
        app.create_session("Support", labels, None, ADMIN_ACTOR)
    assert head(app) == 0


# -- what the gateway reports ---------------------------------------------------------------


def test_gateway_reports_that_apply_are_recorded(app: SessionsApplication) -> None:
    sid, uuid = create(app)
    assert app.record_qr(uuid, "2@abc", LATER, 1, 6) == head(app)
    assert app.record_connected(uuid, JID, "Support Phone") == head(app)
    assert app.record_disconnected(uuid, "connection_lost") == head(app)
    assert app.record_connected(uuid, JID, "Support Phone") == head(app)
    session = app.get_session(sid)
    assert (session.status, session.jid) == ("connected", JID)


def test_reports_after_a_stop_no_longer_apply_and_record_nothing(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    app.record_qr(uuid, "2@abc", LATER, 1, 6)
    app.stop(sid, ADMIN_ACTOR)
    before = head(app)

    assert app.record_qr(uuid, "2@def", LATER, 2, 6) is None
    assert app.record_connected(uuid, JID, "Support Phone") is None
    assert app.record_disconnected(uuid, "connection_lost") is None
    assert app.record_qr_expired(uuid) is None
    assert head(app) == before
    assert app.load(uuid).reason == "stopped"


def test_reports_after_a_delete_no_longer_apply_and_record_nothing(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    app.delete(sid, ADMIN_ACTOR)
    before = head(app)

    assert app.record_connected(uuid, JID, "Support Phone") is None
    assert app.record_qr(uuid, "2@abc", LATER, 1, 6) is None
    assert app.record_disconnected(uuid, "logged_out") is None
    assert app.record_qr_expired(uuid) is None
    assert head(app) == before


def test_reports_that_do_not_fit_the_status_are_dropped(app: SessionsApplication) -> None:
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Support Phone")
    before = head(app)

    # Check a connected session neither shows a QR code nor lets one expire.
    assert app.record_qr(uuid, "2@abc", LATER, 1, 6) is None
    assert app.record_qr_expired(uuid) is None
    assert app.record_connected(uuid, JID, "Support Phone") is None
    assert head(app) == before


def test_a_report_about_an_unknown_session_is_dropped(app: SessionsApplication) -> None:
    assert app.record_connected(uuid4(), JID, "Support Phone") is None
    assert app.record_qr_expired(uuid4()) is None
    assert head(app) == 0


def test_an_impossible_report_is_dropped_and_logged_as_an_error(
    app: SessionsApplication, caplog: pytest.LogCaptureFixture
) -> None:
    _, uuid = create(app)
    before = head(app)
    with caplog.at_level(logging.INFO, logger="application.sessions"):
        assert app.record_qr(uuid, "2@abc", LATER, attempt=7, max_attempts=6) is None
    assert head(app) == before
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_recording_gateway_events_forward_to_the_application(app: SessionsApplication) -> None:
    sid, uuid = create(app)
    events = RecordingGatewayEvents(app)
    assert events.qr_issued(uuid, "2@abc", LATER, 1, 6) == head(app)
    assert events.qr_exhausted(uuid) == head(app)
    assert app.get_session(sid).status == "expired"
    app.reconnect(sid, ADMIN_ACTOR)
    assert events.connected(uuid, JID, "Support Phone") == head(app)
    assert events.keepalive(uuid, healthy=False) == head(app)
    assert app.get_session(sid).degraded
    assert events.disconnected(uuid, Disconnection("logged_out", "unlinked")) == head(app)
    assert (app.get_session(sid).reason, app.get_session(sid).detail) == ("logged_out", "unlinked")
    assert events.connected(uuid4(), JID, "nobody") is None


def test_a_recorded_connection_tells_its_hearing_as_saved_and_a_stale_one_tells_nothing(
    app: SessionsApplication,
) -> None:
    told: list[tuple[UUID, Hearing]] = []
    events = RecordingGatewayEvents(app, on_connected=lambda s, h: told.append((s, h)))
    sid, uuid = create(app)
    assert events.connected(uuid, JID, "Support Phone") == head(app)
    assert told == [(uuid, app.load(uuid).hearing)]
    assert told[0][1].connected and told[0][1].heard_at is not None
    assert events.connected(uuid, JID, "Support Phone") is None  # connected already: stale
    assert events.connected(uuid4(), JID, "nobody") is None
    app.delete(sid, ADMIN_ACTOR)
    assert events.connected(uuid, JID, "Support Phone") is None
    assert len(told) == 1


# -- snapshots ------------------------------------------------------------------------------


def test_a_session_with_more_than_fifty_events_loads_the_same_from_its_snapshot(
    app: SessionsApplication,
) -> None:
    created = app.create_session("Support", {"team": "eu"}, 30, ADMIN_ACTOR)
    sid = created.session_id
    uuid = app.load(sid).id
    second = app.issue_key(sid, "ci", ADMIN_ACTOR)
    app.revoke_key(sid, second.key_id, ADMIN_ACTOR)
    app.record_connected(uuid, JID, "Support Phone")

    # Check no snapshot exists before the fiftieth event.
    assert app.snapshots is not None
    assert list(app.snapshots.get(uuid)) == []

    for _ in range(30):
        app.stop(sid, ADMIN_ACTOR)
        app.reconnect(sid, ADMIN_ACTOR)
    app.record_qr(uuid, "2@abc", LATER, 3, 6)
    app.issue_key(sid, "late", ADMIN_ACTOR)

    # Check a snapshot was taken at version 50.
    snapshots = list(app.snapshots.get(uuid))
    assert [s.originator_version for s in snapshots] == [50]
    assert app.load(sid).version == 68

    # Check the session loaded through the snapshot equals one folded from every event.
    loaded = app.load(sid)
    folded = replay(app.events.get(uuid))
    assert vars(loaded) == vars(folded)
    assert loaded.qr_code == "2@abc"
    assert [k.label for k in loaded.keys.values()] == ["default", "ci", "late"]
    assert not loaded.keys[second.key_id].is_active

    # Check the state at the snapshot itself matches the events up to it.
    at_50: Session = app.repository.get(uuid, version=50)
    assert vars(at_50) == vars(
        replay(e for e in app.events.get(uuid) if e.originator_version <= 50)
    )


def test_the_stored_snapshot_and_events_alone_rebuild_the_session() -> None:
    # Decode the stored records with another application's mapper: nothing but the recorded
    # bytes (and the registered transcodings) is needed to rebuild the session.
    app, other = popo_app(), popo_app()
    sid, uuid = create(app)
    app.issue_key(sid, "ci", ADMIN_ACTOR)
    for _ in range(30):
        app.stop(sid, ADMIN_ACTOR)
        app.reconnect(sid, ADMIN_ACTOR)
    assert app.snapshots is not None

    (stored_snapshot,) = app.snapshots.recorder.select_events(uuid)
    snapshot = other.mapper.to_domain_event(stored_snapshot)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.originator_version == 50
    rebuilt = snapshot.mutate(None)
    assert isinstance(rebuilt, Session)
    assert all(isinstance(k, ApiKey) for k in rebuilt.keys.values())
    later = app.events.recorder.select_events(uuid, gt=50)
    rebuilt = replay((other.mapper.to_domain_event(s) for s in later), start=rebuilt)

    assert vars(rebuilt) == vars(app.load(sid))


# -- what a worker starts when it takes a session over -------------------------------------


def test_a_takeover_resumes_connected_and_connecting_sessions_only(
    app: SessionsApplication,
) -> None:
    connected_id, connected = create(app, "connected")
    app.record_connected(connected, JID, "Support Phone")
    _, connecting = create(app, "connecting")
    app.record_qr(connecting, "2@abc", LATER, 2, 6)
    stopped_id, stopped = create(app, "stopped")
    app.record_connected(stopped, "4900:2@s.whatsapp.net", "Other")
    app.stop(stopped_id, ADMIN_ACTOR)
    deleted_id, deleted = create(app, "deleted")
    app.delete(deleted_id, ADMIN_ACTOR)
    _, expired = create(app, "expired")
    app.record_qr_expired(expired)
    _, dropped = create(app, "dropped")
    app.record_connected(dropped, "4900:3@s.whatsapp.net", "Dropped")
    app.record_disconnected(dropped, "connection_lost")
    untouched = {u: app.load(u).version for u in (stopped, deleted, expired, dropped)}

    plans = {
        u: plan_start(app, u, Reason.SERVICE_RESTARTED)
        for u in (connected, connecting, stopped, deleted, expired, dropped)
    }

    # Check the connected session resumes its linked device; the connecting one pairs anew;
    # the dropped one is left to its retry deadline; the others start nothing.
    assert plans == {
        connected: Resume(JID),
        connecting: Resume(None),
        stopped: None,
        deleted: None,
        expired: None,
        dropped: None,
    }

    # Check the connected one is recorded as disconnected (nothing ran it), then retried.
    events = app.events.recorder.select_events(connected)
    topics = [e.topic.removeprefix("sessiond:Session.") for e in events][-3:]
    assert topics == ["Connected", "Disconnected", "ReconnectAttempted"]
    session = app.get_session(connected_id)
    assert (session.status, session.reason, session.desired) == (
        "connecting",
        "service_restarted",
        "running",
    )
    assert session.jid == JID

    # Check the others are left exactly as they were.
    assert {u: app.load(u).version for u in untouched} == untouched

    # Check the resumed device may then connect again.
    assert app.record_connected(connected, JID, "Support Phone") is not None
    assert app.get_session(connected_id).status == "connected"


def test_a_second_takeover_before_the_resume_resumes_again_without_new_events(
    app: SessionsApplication,
) -> None:
    _, connected = create(app, "connected")
    app.record_connected(connected, JID, "Support Phone")
    assert plan_start(app, connected, Reason.GATEWAY_LOST) == Resume(JID)

    position = app.recorder.max_notification_id()
    assert plan_start(app, connected, Reason.GATEWAY_LOST) == Resume(JID)
    assert app.recorder.max_notification_id() == position  # nothing more to record


def test_a_takeover_of_an_unknown_session_starts_nothing(app: SessionsApplication) -> None:
    assert plan_start(app, uuid4(), Reason.GATEWAY_LOST) is None


# -- failures, retries and keepalives -------------------------------------------------------


def test_failures_in_a_row_count_attempts_and_back_off_until_connected(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    app.policy = ReconnectPolicy(base=2.0, factor=2.0, cap=5.0, jitter=0.0)
    delays = []
    for expected_attempt in (1, 2, 3, 4):
        before = datetime.now(UTC)
        app.record_disconnected(uuid, "whatsapp_unreachable", "dial tcp: network is unreachable")
        session = app.get_session(sid)
        assert (session.status, session.reason, session.retry_attempt) == (
            "disconnected",
            "whatsapp_unreachable",
            expected_attempt,
        )
        assert session.detail == "dial tcp: network is unreachable"
        assert session.next_retry_at is not None
        delays.append(round((session.next_retry_at - before).total_seconds()))
        assert app.retry(uuid) == Resume(None)
        assert app.get_session(sid).status == "connecting"

    assert delays == [2, 4, 5, 5]  # doubling, capped

    app.record_connected(uuid, JID, "Phone")
    session = app.get_session(sid)
    assert (session.retry_attempt, session.next_retry_at, session.detail) == (0, None, None)


def test_reasons_that_need_a_new_qr_code_schedule_no_retry_and_forget_the_device(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    app.record_connected(uuid, JID, "Phone")
    app.record_disconnected(uuid, "logged_out", "unlinked from the phone")
    session = app.get_session(sid)
    assert (session.reason, session.next_retry_at, session.jid) == ("logged_out", None, None)
    assert app.retry(uuid) == Resume(None)  # an explicit retry would pair a new device


def test_a_ban_is_retried_when_it_ends(app: SessionsApplication) -> None:
    sid, uuid = create(app)
    app.record_connected(uuid, JID, "Phone")
    ends = datetime.now(UTC) + timedelta(hours=2)
    app.record_disconnected(uuid, "temporarily_banned", "SEND_TO_TOO_MANY_PEOPLE", ends)
    session = app.get_session(sid)
    assert session.next_retry_at is not None
    assert ends <= session.next_retry_at <= ends + timedelta(seconds=5)
    assert session.jid == JID  # the device stays linked through a ban


def test_a_replaced_stream_is_reported_and_not_fought(app: SessionsApplication) -> None:
    sid, uuid = create(app)
    app.record_connected(uuid, JID, "Phone")
    app.record_disconnected(uuid, "stream_replaced")
    session = app.get_session(sid)
    assert (session.status, session.reason, session.next_retry_at) == (
        "disconnected",
        "stream_replaced",
        None,
    )


def test_a_retry_that_no_longer_applies_records_nothing(app: SessionsApplication) -> None:
    sid, uuid = create(app)
    app.record_connected(uuid, JID, "Phone")
    position = head(app)
    assert app.retry(uuid) is None  # connected: nothing to retry
    app.stop(sid, ADMIN_ACTOR)
    assert app.retry(uuid) is None  # stopped by the operator meanwhile
    assert head(app) == position + 1


def test_keepalive_failures_degrade_a_connected_session_and_recover(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    assert app.record_keepalive(uuid, healthy=False) is None  # not connected: ignored
    app.record_connected(uuid, JID, "Phone")
    assert app.record_keepalive(uuid, healthy=False) is not None
    assert app.get_session(sid).degraded
    position = head(app)
    assert app.record_keepalive(uuid, healthy=False) is None  # already degraded
    assert head(app) == position
    assert app.record_keepalive(uuid, healthy=True) is not None
    assert not app.get_session(sid).degraded
    app.record_keepalive(uuid, healthy=False)
    app.record_disconnected(uuid, "connection_lost")
    assert not app.get_session(sid).degraded  # a disconnected session is not "degraded"


def test_a_stale_qr_code_is_expired_by_its_deadline_only_when_still_shown(
    app: SessionsApplication,
) -> None:
    sid, uuid = create(app)
    app.record_qr(uuid, "2@abc", datetime.now(UTC) + timedelta(seconds=60), 1, 6)
    assert app.expire_stale_qr(uuid, datetime.now(UTC)) is None  # not due yet
    assert app.expire_stale_qr(uuid, datetime.now(UTC) + timedelta(seconds=61)) is not None
    assert app.get_session(sid).status == "expired"
    assert app.expire_stale_qr(uuid, datetime.now(UTC) + timedelta(seconds=61)) is None


# -- the gateway projection -----------------------------------------------------------------


def test_the_gateway_view_follows_desired_state_generations_and_deadlines(
    app: SessionsApplication,
) -> None:
    projection = GatewayProjection(view=MemoryGatewayView())
    view = projection.view
    sid, uuid = create(app)
    catch_up(app, projection)
    row = view.row(uuid)
    assert row is not None
    assert (row.desired, row.generation, row.jid) == ("running", 1, None)
    # Check a start is watched: no QR code, connection or failure in time, and it is retried.
    (watch,) = view.deadlines(uuid)
    assert (watch.kind, watch.due_at) == (
        DeadlineKind.START_CHECK,
        app.load(sid).created_on + START_TIMEOUT,
    )

    expires = datetime.now(UTC) + timedelta(seconds=60)
    app.record_qr(uuid, "2@abc", expires, 1, 6)
    catch_up(app, projection)
    assert [(d.kind, d.due_at) for d in view.deadlines(uuid)] == [
        (DeadlineKind.QR_EXPIRY, expires + QR_GRACE)
    ]

    app.record_connected(uuid, JID, "Phone")
    catch_up(app, projection)
    assert view.deadlines(uuid) == []
    assert view.row(uuid).jid == JID  # type: ignore[union-attr]

    app.record_disconnected(uuid, "connection_lost")
    catch_up(app, projection)
    (retry,) = view.deadlines(uuid)
    assert (retry.kind, retry.due_at) == (DeadlineKind.RETRY, app.get_session(sid).next_retry_at)

    app.retry(uuid)
    catch_up(app, projection)
    assert [d.kind for d in view.deadlines(uuid)] == [DeadlineKind.START_CHECK]

    app.stop(sid, ADMIN_ACTOR)
    catch_up(app, projection)
    assert view.row(uuid).desired == "stopped"  # type: ignore[union-attr]
    app.reconnect(sid, ADMIN_ACTOR)
    catch_up(app, projection)
    row = view.row(uuid)
    assert row is not None
    assert (row.desired, row.generation) == ("running", 2)

    app.issue_key(sid, "ci", ADMIN_ACTOR)
    app.delete(sid, ADMIN_ACTOR)
    catch_up(app, projection)
    assert view.row(uuid).desired == "deleted"  # type: ignore[union-attr]
    assert [d.kind for d in view.deadlines(uuid)] == [DeadlineKind.LOGOUT]
    # Check every event is tracked, those the projection ignores included.
    assert view.max_tracking_id(app.name) == head(app)


def test_link_events_name_the_worker_that_reported_them(app: SessionsApplication) -> None:
    _, uuid = create(app)
    RecordingGatewayEvents(app, lambda: "worker-a").connected(uuid, JID, "Support Phone")
    app.record_disconnected(uuid, Reason.HANDED_OVER, "handed over", worker="worker-a")
    # Check the next holder resumes a handed-over session at once, and says so as itself.
    assert plan_start(app, uuid, Reason.SERVICE_RESTARTED, "worker-b") == Resume(JID)
    RecordingGatewayEvents(app, lambda: "worker-b").connected(uuid, JID, "Support Phone")
    events = [e for e in app.events.get(uuid) if type(e).__name__ in ("Connected", "Disconnected")]
    assert [(type(e).__name__, getattr(e, "worker", None)) for e in events] == [
        ("Connected", "worker-a"),
        ("Disconnected", "worker-a"),
        ("Connected", "worker-b"),
    ]
