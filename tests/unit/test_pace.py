"""The sending pace and quotas as a pure policy (`domain.policy.PacePolicy`) with a clock the
test controls, the send log built from recorded ``MessageSent`` events (snapshots included),
and the session's own settings (`SendingSet`)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from eventsourcing.domain import Snapshot

from application.sessions import SessionsApplication
from domain.errors import InvalidValue
from domain.policy import (
    DAY,
    HOUR,
    SEND_BUCKET,
    TYPING_MAX,
    PacePolicy,
    SendingSettings,
    SendLog,
)
from domain.session import Session
from domain.values import ADMIN_ACTOR
from infra.settings import Settings, SettingsError
from tests.unit.helpers import POPO_ENV, create, popo_app

T0 = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
PACE = PacePolicy()


def log_of(*instants: datetime) -> SendLog:
    log = SendLog()
    for at in instants:
        log.add(at.timestamp())
    return log


def test_the_gap_is_the_interval_plus_a_jitter_inside_its_bounds() -> None:
    settings = SendingSettings(interval=1.0, jitter=2.0)
    rng = random.Random(7)
    gaps = [PACE.gap(settings, rng) for _ in range(5000)]
    assert min(gaps) >= 1.0 and max(gaps) <= 3.0
    # Check the jitter is spread over its range, not stuck at one end.
    assert min(gaps) < 1.1 and max(gaps) > 2.9
    assert PACE.gap(SendingSettings(interval=0.5)) == 0.5


def test_without_quotas_every_message_may_go_now() -> None:
    log = log_of(*(T0 + timedelta(seconds=i) for i in range(50)))
    assert PACE.schedule(SendingSettings(), log, T0, 3) == [T0, T0, T0]
    state = PACE.quota(SendingSettings(), log, T0 + timedelta(minutes=1))
    assert state.remaining_hour is None and state.remaining_day is None
    assert state.opens_at is None and state.sent_hour == 50


def test_the_next_send_waits_for_the_pace_after_the_last_recorded_send() -> None:
    settings = SendingSettings(interval=2.0)
    log = log_of(T0)
    assert PACE.next_send_at(settings, log, T0 + timedelta(seconds=0.5), 2.5) == T0 + timedelta(
        seconds=2.5
    )
    later = T0 + timedelta(seconds=10)
    assert PACE.next_send_at(settings, log, later, 2.5) == later
    assert PACE.next_send_at(settings, SendLog(), T0, 2.5) == T0


def test_an_hour_quota_holds_the_message_until_the_oldest_send_leaves_the_window() -> None:
    settings = SendingSettings(interval=0, per_hour=2)
    first, second = T0, T0 + timedelta(minutes=10)
    log = log_of(first, second)
    now = T0 + timedelta(minutes=20)
    state = PACE.quota(settings, log, now)
    assert (state.sent_hour, state.remaining_hour) == (2, 0)
    # Counted by the minute: the send at 12:00:30 counts until 13:01:00.
    opens = datetime(2026, 11, 25, 13, 1, tzinfo=UTC)
    assert state.opens_at == opens
    assert PACE.next_send_at(settings, log, now, 0.0) == opens
    # Check a later clock lets it go, and never before an hour after the send.
    assert PACE.quota(settings, log, opens).opens_at is None
    assert PACE.quota(settings, log, opens - timedelta(seconds=1)).opens_at == opens
    assert opens - first >= timedelta(seconds=HOUR)


def test_the_schedule_of_a_queue_keeps_each_window_within_its_quota() -> None:
    settings = SendingSettings(per_hour=3, per_day=5)
    times = PACE.schedule(settings, SendLog(), T0, 8)
    assert times[:3] == [T0, T0, T0]
    # The 4th waits an hour (the window's minute), the 6th the day's window.
    assert times[3] == times[4] == datetime(2026, 11, 25, 13, 1, tzinfo=UTC)
    assert times[5] == datetime(2026, 11, 26, 12, 1, tzinfo=UTC)
    assert times == sorted(times)  # order is kept
    # Check no 60 minutes and no 24 hours of the schedule hold more than their quota.
    for start in times:
        assert sum(start <= t < start + timedelta(seconds=HOUR) for t in times) <= 3
        assert sum(start <= t < start + timedelta(seconds=DAY) for t in times) <= 5


def test_random_histories_never_exceed_a_quota_in_any_window() -> None:
    rng = random.Random(11)
    for _ in range(60):
        settings = SendingSettings(per_hour=rng.randint(1, 6), per_day=rng.randint(3, 20))
        now, log, sent = T0, SendLog(), []
        for _ in range(40):
            now += timedelta(seconds=rng.uniform(0, 1800))
            at = PACE.next_send_at(settings, log, now, 0.0)
            log.add(at.timestamp())
            sent.append(at)
            now = at
        for start in sent:
            hour = sum(start <= t < start + timedelta(seconds=HOUR) for t in sent)
            day = sum(start <= t < start + timedelta(seconds=DAY) for t in sent)
            assert hour <= settings.per_hour and day <= settings.per_day  # type: ignore[operator]


def test_the_log_forgets_minutes_no_window_counts() -> None:
    log = log_of(T0, T0 + timedelta(seconds=10), T0 + timedelta(minutes=5))
    assert log.minutes == [[int(T0.timestamp()) // SEND_BUCKET, 2], [log.minutes[1][0], 1]]
    log.add((T0 + timedelta(days=1, minutes=2)).timestamp())
    assert len(log.minutes) == 2  # the first minute left the day's window
    assert log.last == (T0 + timedelta(days=1, minutes=2)).timestamp()


def test_typing_grows_with_the_text_and_is_capped() -> None:
    short, longer = PACE.typing_seconds("hi"), PACE.typing_seconds("x" * 100)
    assert 1.0 <= short < longer <= TYPING_MAX
    assert PACE.typing_seconds("x" * 4096) == TYPING_MAX


def test_settings_out_of_bounds_are_refused() -> None:
    for bad in (
        SendingSettings(interval=-1),
        SendingSettings(jitter=4000),
        SendingSettings(per_hour=0),
        SendingSettings(per_day=-3),
    ):
        with pytest.raises(ValueError, match="must be between"):
            bad.check()


# -- the session ------------------------------------------------------------------------------


def sent_through(app: SessionsApplication, count: int) -> str:
    session_id, uuid = create(app)
    app.record_connected(uuid, "1555:1@s.whatsapp.net", "Phone")
    for i in range(count):
        result = app.send_message(session_id, "14155550123@s.whatsapp.net", f"m{i}", None, "a")
        app.record_sent(uuid, result.message_id, f"WA{i}")
    return session_id


def test_the_send_log_is_built_from_recorded_events_across_snapshots() -> None:
    app = popo_app()
    session_id = sent_through(app, 60)  # beyond the snapshot interval (50 versions)
    uuid = app.load(session_id).id
    # Check the session read again from the store (its snapshot, then the events after it)
    # counts every send, and the snapshot alone the sends before it.
    again: Session = app.repository.get(uuid)
    assert sum(count for _, count in again.outbox.send_log.minutes) == 60
    assert app.snapshots is not None
    *_, snapshot = app.snapshots.get(uuid)
    restored = cast("Session", cast("Snapshot", snapshot).mutate(None))
    assert isinstance(restored.outbox.sends, SendLog)
    before = sum(count for _, count in restored.outbox.send_log.minutes)
    assert 0 < before < 60 and restored.outbox.send_log.last is not None


def test_a_session_sets_its_own_settings_and_the_rest_follows_the_defaults() -> None:
    app = SessionsApplication(env=POPO_ENV, sending=SendingSettings(interval=1.0, per_day=500))
    session_id, _ = create(app)
    assert app.set_sending(session_id, {"per_hour": 2, "jitter": 2.0}, ADMIN_ACTOR) is not None
    assert app.set_sending(session_id, {"per_hour": 2, "jitter": 2.0}, ADMIN_ACTOR) is None
    state = app.sending_state(app.load(session_id), T0)
    assert state.settings == SendingSettings(interval=1.0, jitter=2.0, per_hour=2, per_day=500)
    assert state.own == ("jitter", "per_hour")
    # Check a quota set to none overrides the deployment's, and {} goes back to the defaults.
    app.set_sending(session_id, {"per_day": None}, ADMIN_ACTOR)
    assert app.sending_state(app.load(session_id), T0).settings.per_day is None
    app.set_sending(session_id, {}, ADMIN_ACTOR)
    assert app.sending_state(app.load(session_id), T0).settings == app.sending_defaults
    for bad in ({"per_hour": 0}, {"interval": -1}, {"speed": 3}):
        with pytest.raises(InvalidValue):
            app.set_sending(session_id, bad, ADMIN_ACTOR)


def test_queued_messages_over_quota_say_when_they_go() -> None:
    app = popo_app()
    session_id = sent_through(app, 2)
    app.set_sending(session_id, {"per_hour": 2}, ADMIN_ACTOR)
    held = app.send_message(session_id, "14155550123@s.whatsapp.net", "third", None, "a")
    assert held.sending is not None
    now = datetime.now(UTC)
    state = app.sending_state(app.load(session_id), now)
    opens = state.holds[held.message_id]
    assert now + timedelta(minutes=58) < opens <= now + timedelta(minutes=61)
    assert state.quota.remaining_hour == 0


def test_a_send_log_a_snapshot_lacks_is_rebuilt_from_the_events_page_by_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = popo_app()
    session_id = sent_through(app, 300)  # 600 and more events: more than one page
    session = app.load(session_id)
    built = session.outbox.send_log
    assert sum(count for _, count in built.minutes) == 300
    # Check the rebuild (for a snapshot of a release that counted no sends) finds them all.
    session.outbox.sends = None
    app.rebuild_send_log(session)
    assert session.outbox.sends == built
    # Check the load does it when the store gives the session back without one.
    stored = app.repository.get

    def without_log(*args: Any, **kwargs: Any) -> Any:
        found = stored(*args, **kwargs)
        found.outbox.sends = None
        return found

    monkeypatch.setattr(app.repository, "get", without_log)
    assert app.load(session_id).outbox.send_log == built
    monkeypatch.undo()
    # Check sends older than a day are not read.
    app.rebuild_send_log(session, now=datetime.now(UTC) + timedelta(days=2))
    assert session.outbox.send_log.minutes == []


def test_the_deployments_defaults_come_from_the_environment() -> None:
    assert Settings.from_env({}).sending_defaults() == SendingSettings(interval=1.0)
    settings = Settings.from_env(
        {
            "SESSIOND_SEND_INTERVAL": "2",
            "SESSIOND_SEND_JITTER": "1.5",
            "SESSIOND_MESSAGES_PER_HOUR": "100",
            "SESSIOND_MESSAGES_PER_DAY": "1000",
            "SESSIOND_SEND_TYPING": "true",
        }
    )
    assert settings.sending_defaults() == SendingSettings(2.0, 1.5, 100, 1000, typing=True)
    for name, value in (
        ("SESSIOND_MESSAGES_PER_HOUR", "0"),
        ("SESSIOND_MESSAGES_PER_DAY", "many"),
        ("SESSIOND_SEND_JITTER", "-1"),
        ("SESSIOND_SEND_TYPING", "sometimes"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
