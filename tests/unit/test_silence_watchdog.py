"""The silence watchdog: the pure policy (who is watched, when a session is silent, what
follows), the session's hearing clock and its `Silenced` / `SilenceEnded` events (kept
through a takeover, restarted by a new connection, rebuilt from the log and a snapshot), the
status row, health, webhooks and metrics built from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from eventsourcing.domain import Snapshot

from api.dashboard.present import line, state_of, watchdog
from api.presenters import health, health_reason, session_out, status_out
from application.ports import InboundMessage
from application.sessions import SessionsApplication
from domain.errors import InvalidTransition
from domain.policy import (
    Hearing,
    ReconnectPolicy,
    SilenceEnd,
    SilencePolicy,
    SilenceStep,
    SilenceVerdict,
)
from domain.session import Session
from domain.values import ADMIN_ACTOR, Reason, public_session_id
from domain.webhook import EVENT_TYPES
from infra.settings import Settings, SettingsError
from projections.status import SessionRow, SessionStatusProjection
from projections.webhooks import webhook_event
from tests.unit.helpers import catch_up, connected, create, event_names, popo_app, sessions_metrics

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
AFTER = timedelta(minutes=30)
POLICY = SilencePolicy(AFTER)
JID = "4915112345678:1@s.whatsapp.net"
FRIEND = "14155550123@s.whatsapp.net"


def hearing(**changes: Any) -> Hearing:
    watched = Hearing(connected=True, keepalive_failing=False, receives=True, heard_at=NOW)
    return Hearing(**{**watched.__dict__, **changes})


# -- the policy ----------------------------------------------------------------------------


def test_a_watched_session_waits_until_the_period_has_passed_since_it_was_last_heard() -> None:
    assert POLICY.judge(hearing(), NOW) == SilenceVerdict(SilenceStep.WAIT, NOW + AFTER)
    just_before = NOW + AFTER - timedelta(microseconds=1)
    assert POLICY.judge(hearing(), just_before) == SilenceVerdict(SilenceStep.WAIT, NOW + AFTER)
    assert POLICY.judge(hearing(), NOW + AFTER).step == SilenceStep.SILENCE
    assert POLICY.judge(hearing(), NOW + 3 * AFTER).step == SilenceStep.SILENCE


def test_a_session_recorded_silent_is_checked_whatever_the_clock() -> None:
    silent = hearing(silent_since=NOW + AFTER)
    assert POLICY.judge(silent, NOW + AFTER).step == SilenceStep.CHECK
    assert POLICY.judge(silent, NOW).step == SilenceStep.CHECK


def test_who_is_not_judged() -> None:
    late = NOW + 10 * AFTER
    # never received anything since its device was linked: looked at again a period later
    assert POLICY.judge(hearing(receives=False), late) == SilenceVerdict(
        SilenceStep.IGNORE, late + AFTER
    )
    assert POLICY.judge(hearing(heard_at=None), late).step == SilenceStep.IGNORE
    # degraded by its keepalives already (whatsmeow recycles that link itself)
    assert POLICY.judge(hearing(keepalive_failing=True), late).step == SilenceStep.IGNORE
    # not connected: its next connection is looked at
    assert POLICY.judge(hearing(connected=False), late) == SilenceVerdict(SilenceStep.IGNORE)
    # the watchdog is off
    for off in (SilencePolicy(None), SilencePolicy(timedelta(0))):
        assert not off.enabled
        assert off.judge(hearing(), late) == SilenceVerdict(SilenceStep.IGNORE)
    assert POLICY.enabled


def test_only_a_takeover_keeps_the_clock_and_only_a_failed_check_recycles() -> None:
    for reason in (Reason.SERVICE_RESTARTED, Reason.GATEWAY_LOST, Reason.HANDED_OVER):
        assert SilencePolicy.keeps_the_clock(reason)
    for other in (None, Reason.SILENT, Reason.CONNECTION_LOST, Reason.LOGGED_OUT, "stopped"):
        assert not SilencePolicy.keeps_the_clock(other)
    assert SilencePolicy.recycles(check_passed=False) == Reason.SILENT
    assert SilencePolicy.recycles(check_passed=True) is None


def test_a_recycled_connection_is_tried_again_at_once_then_with_backoff() -> None:
    policy = ReconnectPolicy()
    assert policy.next_retry(Reason.SILENT, 1, NOW) == NOW
    assert not ReconnectPolicy.needs_new_qr(Reason.SILENT)


# -- the session's clock and events ----------------------------------------------------------


def new_connected() -> Session:
    session = Session(
        id=UUID(int=7), name="S", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
    )
    session.connect(JID, "Ann")
    return session


def receive(session: Session, whatsapp_id: str = "3A01") -> None:
    session.receive_message(
        message_id=f"msg_{whatsapp_id}",
        whatsapp_id=whatsapp_id,
        sender=FRIEND,
        chat=FRIEND,
        text="hi",
        push_name="Bob",
        sent_at=NOW,
    )


def test_a_new_link_is_heard_but_not_watched_until_something_comes_in() -> None:
    session = new_connected()
    connected_at = session.pending_events[-1].timestamp
    assert session.hearing == Hearing(True, False, False, connected_at, None)
    receive(session)
    received_at = session.pending_events[-1].timestamp
    assert session.hearing == Hearing(True, False, True, received_at, None)


def test_receipts_and_keepalives_are_heard_and_end_a_silence() -> None:
    session = new_connected()
    session.queue_message("msg_1", FRIEND, "hello", None, ADMIN_ACTOR)
    session.mark_sent("msg_1", "3EB0AA")
    session.collect_events()
    assert session.fall_silent()
    session.collect_events()
    assert session.acknowledge("3EB0AA", "delivered", NOW)
    delivered, ended = session.collect_events()
    assert isinstance(delivered, Session.MessageDelivered)
    assert isinstance(ended, Session.SilenceEnded) and ended.cause == "heard"
    assert session.hearing.receives and session.hearing.silent_since is None
    assert session.heard_at == ended.timestamp
    # a repeated receipt adds nothing, so nothing is heard from it
    assert not session.acknowledge("3EB0AA", "delivered", NOW)
    assert session.pending_events == []
    assert session.lose_keepalive()
    assert session.restore_keepalive()
    assert session.heard_at == session.pending_events[-1].timestamp


def test_falling_silent_records_the_last_word_once_and_only_when_connected() -> None:
    session = new_connected()
    receive(session)
    heard = session.heard_at
    session.collect_events()
    assert session.fall_silent()
    (silenced,) = session.collect_events()
    assert isinstance(silenced, Session.Silenced)
    assert silenced.heard_at == heard
    assert session.hearing.silent_since == silenced.timestamp
    assert not session.fall_silent()  # already silent
    assert session.pending_events == []
    session.disconnect(Reason.CONNECTION_LOST)
    with pytest.raises(InvalidTransition):
        session.fall_silent()


def test_failing_keepalives_take_over_from_a_silence() -> None:
    session = new_connected()
    receive(session)
    session.fall_silent()
    session.lose_keepalive()
    assert session.hearing.silent_since is None and session.hearing.keepalive_failing
    assert not session.fall_silent()  # degraded for a known reason


def test_a_message_received_while_silent_ends_the_silence() -> None:
    session = new_connected()
    receive(session, "3A01")
    session.fall_silent()
    session.collect_events()
    receive(session, "3A02")
    assert event_names(session) == ["MessageReceived", "SilenceEnded"]
    assert session.silent_since is None
    # the same message again records nothing, so hears nothing
    receive(session, "3A02")
    assert session.pending_events == []


def test_a_takeover_keeps_the_clock_and_the_silence_and_a_new_connection_restarts_them() -> None:
    session = new_connected()
    receive(session)
    heard = session.heard_at
    session.fall_silent()
    session.collect_events()
    for reason in (Reason.GATEWAY_LOST, Reason.SERVICE_RESTARTED, Reason.HANDED_OVER):
        session.disconnect(reason)
        session.attempt_reconnect()
        session.connect(JID, "Ann")
        assert session.heard_at == heard
        assert session.silent_since is not None
    assert "SilenceEnded" not in event_names(session)
    # the watchdog recycles it: the new connection starts the clock again
    session.disconnect(Reason.SILENT, "no answer")
    session.attempt_reconnect()
    session.connect(JID, "Ann")
    events = session.collect_events()
    assert [type(e).__name__ for e in events] == [
        "Disconnected",
        "ReconnectAttempted",
        "Connected",
        "SilenceEnded",
    ]
    assert isinstance(events[-1], Session.SilenceEnded)
    assert events[-1].cause == SilenceEnd.RECONNECTED
    assert session.heard_at == events[-1].timestamp
    assert session.receives  # the same device: still watched


def test_a_new_device_is_not_watched_until_it_receives() -> None:
    session = new_connected()
    receive(session)
    session.disconnect(Reason.LOGGED_OUT)
    session.request_reconnect(ADMIN_ACTOR)
    session.connect("4915199999999:2@s.whatsapp.net", "Ann")
    assert not session.hearing.receives


def test_the_check_ends_a_silence_and_a_session_not_silent_records_nothing() -> None:
    session = new_connected()
    assert not session.end_silence(SilenceEnd.CHECKED)
    receive(session)
    session.fall_silent()
    session.collect_events()
    assert session.end_silence(SilenceEnd.CHECKED)
    (ended,) = session.collect_events()
    assert isinstance(ended, Session.SilenceEnded) and ended.cause == "checked"
    assert session.heard_at == ended.timestamp


def test_the_clock_is_rebuilt_from_the_log_and_a_snapshot() -> None:
    app = popo_app()
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    app.record_received(uuid, InboundMessage("3A01", FRIEND, FRIEND, "hi", NOW))
    now = datetime.now(UTC) + AFTER
    assert app.record_silent(uuid, POLICY, now)
    loaded: Session = app.repository.get(uuid)
    assert loaded.hearing.silent_since is not None and loaded.hearing.receives
    stored = app.mapper.to_stored_event(Snapshot.take(loaded))
    snapshot: Any = app.mapper.to_domain_event(stored)
    assert snapshot.mutate(None).hearing == loaded.hearing
    assert app.hearing(uuid) == loaded.hearing


def test_recording_silence_judges_the_session_as_recorded() -> None:
    app = popo_app()
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    later = datetime.now(UTC) + 2 * AFTER
    assert not app.record_silent(uuid, POLICY, later)  # never received: not judged
    app.record_received(uuid, InboundMessage("3A01", FRIEND, FRIEND, "hi", NOW))
    assert not app.record_silent(uuid, POLICY, datetime.now(UTC))  # heard just now
    assert app.record_silent(uuid, POLICY, later)
    assert app.record_silent(uuid, POLICY, later)  # silent already: to be checked
    types = [type(e).__name__ for e in app.events.get(uuid)]
    assert types.count("Silenced") == 1
    assert app.record_check_passed(uuid) is not None
    assert app.record_check_passed(uuid) is None  # not silent any more


# -- the status row, health, webhooks, metrics and the dashboard -----------------------------


def silent_row(app: SessionsApplication) -> tuple[SessionRow, SessionStatusProjection, UUID]:
    projection, session_id, uuid = connected(app, JID)
    app.record_received(uuid, InboundMessage("3A01", FRIEND, FRIEND, "hi", NOW))
    app.record_silent(uuid, POLICY, datetime.now(UTC) + AFTER)
    catch_up(app, projection)
    row = projection.view.get_session(session_id)
    assert row is not None
    return row, projection, uuid


def test_the_status_shows_a_silent_session_degraded_and_healthy_again_when_heard() -> None:
    app = popo_app()
    row, projection, uuid = silent_row(app)
    session = app.load(uuid)
    assert (health(row), health_reason(row)) == ("degraded", "silent")
    shown = status_out(row)
    assert (shown.health, shown.health_reason) == ("degraded", "silent")
    assert shown.silent_since == session.silent_since
    assert shown.last_heard_at == session.heard_at
    assert session_out(row, 600).health_reason == "silent"
    assert state_of(row) == "degraded" and line(row, NOW).health_reason == "silent"
    app.record_check_passed(uuid)
    catch_up(app, projection)
    after = projection.view.get_session(row.session_id)
    assert after is not None
    assert (health(after), health_reason(after), after.silent_since) == ("healthy", None, None)
    assert after.heard_at == app.load(uuid).heard_at
    assert status_out(after).silent_since is None


def test_the_view_keeps_the_clock_through_a_takeover_as_the_session_does() -> None:
    app = popo_app()
    row, projection, uuid = silent_row(app)
    app.record_disconnected(uuid, Reason.GATEWAY_LOST, "no client was running it")
    catch_up(app, projection)
    disconnected = projection.view.get_session(row.session_id)
    assert disconnected is not None
    assert health(disconnected) == "unhealthy" and health_reason(disconnected) is None
    app.retry(uuid)
    app.record_connected(uuid, JID, "Ann")
    catch_up(app, projection)
    resumed = projection.view.get_session(row.session_id)
    assert resumed is not None
    session = app.load(uuid)
    assert (resumed.heard_at, resumed.silent_since) == (session.heard_at, session.silent_since)
    assert health_reason(resumed) == "silent"


def test_health_changes_are_webhook_events() -> None:
    assert "session.health-changed" in EVENT_TYPES
    app = popo_app()
    _, uuid = create(app)
    app.record_connected(uuid, JID, "Ann")
    app.record_received(uuid, InboundMessage("3A01", FRIEND, FRIEND, "hi", NOW))
    heard = app.load(uuid).heard_at
    assert heard is not None
    app.record_silent(uuid, POLICY, datetime.now(UTC) + AFTER)
    app.record_check_passed(uuid)
    app.record_keepalive(uuid, healthy=False)
    app.record_keepalive(uuid, healthy=True)
    found = [f for e in app.events.get(uuid) if (f := webhook_event(e))]
    changes = [data for kind, data in found if kind == "session.health-changed"]
    sid = public_session_id(uuid)
    assert changes == [
        {
            "sessionId": sid,
            "health": "degraded",
            "reason": "silent",
            "lastHeardAt": heard.isoformat().replace("+00:00", "Z"),
        },
        {"sessionId": sid, "health": "healthy", "reason": None, "cause": "checked"},
        {"sessionId": sid, "health": "degraded", "reason": "keepalive_failing"},
        {"sessionId": sid, "health": "healthy", "reason": None, "cause": "keepalive_restored"},
    ]


def test_metrics_count_degraded_sessions_by_reason() -> None:
    base = SessionRow(session_id="a", name="S", status="connected", created_at=NOW, updated_at=NOW)
    rows = [
        msgspec.structs.replace(base, silent_since=NOW),
        msgspec.structs.replace(base, silent_since=NOW),
        msgspec.structs.replace(base, degraded=True),
        base,
        msgspec.structs.replace(base, status="disconnected", silent_since=NOW),  # unhealthy
        msgspec.structs.replace(base, silent_since=NOW, desired="deleted"),
    ]
    text = sessions_metrics(rows)
    assert 'sessiond_sessions_degraded{reason="silent"} 2.0' in text
    assert 'sessiond_sessions_degraded{reason="keepalive_failing"} 1.0' in text
    assert 'sessiond_sessions_health{health="degraded"} 3.0' in text
    assert 'sessiond_sessions_health{health="unhealthy"} 1.0' in text


# -- settings ---------------------------------------------------------------------------------


def test_the_period_and_the_check_timeout_are_settings_and_zero_turns_the_watchdog_off() -> None:
    defaults = Settings.from_env({})
    assert (defaults.silence_after, defaults.silence_check_timeout) == (1800.0, 20.0)
    off = Settings.from_env({"SESSIOND_SILENCE_AFTER": "0"})
    assert off.silence_after == 0.0
    short = Settings.from_env(
        {"SESSIOND_SILENCE_AFTER": "2.5", "SESSIOND_SILENCE_CHECK_TIMEOUT": "1"}
    )
    assert (short.silence_after, short.silence_check_timeout) == (2.5, 1.0)
    for name, bad in (
        ("SILENCE_AFTER", "-1"),
        ("SILENCE_AFTER", "soon"),
        ("SILENCE_AFTER", "9999999"),
        ("SILENCE_CHECK_TIMEOUT", "0"),
        ("SILENCE_CHECK_TIMEOUT", "600"),
    ):
        with pytest.raises(SettingsError, match=f"SESSIOND_{name}="):
            Settings.from_env({f"SESSIOND_{name}": bad})


def test_the_dashboard_says_whether_the_watchdog_watches_the_session() -> None:
    app = popo_app()
    projection, session_id, uuid = connected(app, JID)
    catch_up(app, projection)

    def row() -> SessionRow:
        found = projection.view.get_session(session_id)
        assert found is not None
        return found

    assert watchdog(row(), 1800) == (
        "waiting",
        "not yet: from its first message or receipt on (then 30 min)",
    )
    app.record_received(uuid, InboundMessage("3A01", FRIEND, FRIEND, "hi", NOW))
    catch_up(app, projection)
    assert watchdog(row(), 1800) == (
        "watching",
        "watching: silent after 30 min without a word from WhatsApp",
    )
    assert watchdog(row(), 7200)[1].endswith("after 2 h without a word from WhatsApp")
    assert watchdog(row(), 2.5)[1].endswith("after 2.5 s without a word from WhatsApp")
    assert watchdog(row(), 0) == ("off", "off (SESSIOND_SILENCE_AFTER=0)")
    # a new device waits for its first message again, as the session does
    app.record_disconnected(uuid, Reason.LOGGED_OUT, "unlinked")
    catch_up(app, projection)
    assert not row().receives and not app.load(uuid).receives
    assert watchdog(row(), 1800)[0] == "waiting"
