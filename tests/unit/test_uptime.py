"""Uptime: the one figure (`uptime_percent`), the series from known timelines, the status
row's accumulators, and that both views give the same figure for the same instant."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.persistence import Tracking
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import DomainError
from domain.session import Session
from domain.values import ADMIN_ACTOR, public_session_id
from projections.status import (
    MemorySessionStatusView,
    SessionRow,
    SessionStatusProjection,
    status_uptime,
    window_start,
)
from projections.uptime import (
    BUCKETS,
    MemoryUptimeView,
    Transition,
    UptimeProjection,
    floor,
    overall,
    series,
    uptime_percent,
)
from tests.unit.helpers import catch_up, create, popo_app

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
DAY = BUCKETS["day"]
JID = "4915112345678:1@s.whatsapp.net"


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# -- the figure -------------------------------------------------------------------------------


def test_the_figure_is_a_percentage_with_two_decimals_or_null() -> None:
    assert uptime_percent(0, 0) is None
    assert uptime_percent(-1, 0) is None
    assert uptime_percent(3600, 0) == 0.0
    assert uptime_percent(3600, 3600) == 100.0
    assert uptime_percent(3, 2) == 66.67
    assert uptime_percent(1000, 999) == 99.9
    assert uptime_percent(100_000, 99_995) == 100.0  # 99.995 rounds up
    assert uptime_percent(10, 20) == 100.0  # never more than 100


# -- the series, from transitions --------------------------------------------------------------

# Created 00:00, linked 01:00, dropped 03:00, stopped 04:00, restarted 06:00, up 06:30.
TIMELINE = [
    Transition(at(0), running=True, connected=False),
    Transition(at(1), running=True, connected=True),
    Transition(at(3), running=True, connected=False),
    Transition(at(4), running=False, connected=False),
    Transition(at(6), running=True, connected=False),
    Transition(at(6.5), running=True, connected=True),
]


def test_hourly_buckets_count_only_the_time_in_service() -> None:
    points = series(TIMELINE, at(0), at(8), H)
    # Before the first link (00:00-01:00) and while stopped (04:00-06:00): not in service.
    assert [p.uptime for p in points] == [None, 100.0, 100.0, 0.0, None, None, 50.0, 100.0]
    assert [p.running_seconds for p in points] == [0] + [3600] * 3 + [0, 0] + [3600] * 2
    assert overall(points) == uptime_percent(5 * 3600, 3.5 * 3600) == 70.0


def test_a_window_starting_inside_the_timeline_takes_the_state_from_before_it() -> None:
    # From 02:00 the state is "connected since 01:00"; the transitions view gives the last
    # one at or before the start first.
    transitions = [TIMELINE[1], *TIMELINE[2:]]
    points = series(transitions, at(2), at(5), H)
    assert [p.uptime for p in points] == [100.0, 0.0, None]


def test_a_window_after_the_link_whose_start_is_disconnected_counts_from_its_start() -> None:
    # From 03:30 (disconnected since 03:00, linked at 01:00): the view gives the first link,
    # then the last transition before the start.
    view = MemoryUptimeView()
    sid = uuid4()
    for n, transition in enumerate(TIMELINE, start=1):
        view.add_transition(sid, transition, Tracking("sessiond", n))
    given_back = view.transitions(sid, at(3.5), at(8))
    assert given_back == [TIMELINE[1], TIMELINE[2], *TIMELINE[3:]]
    points = series(given_back, at(3.5), at(8), H)
    assert [p.uptime for p in points] == [0.0, None, 0.0, 100.0, 100.0]
    # Check a session never linked gets no link from the view, and no uptime.
    never = uuid4()
    view.add_transition(never, TIMELINE[0], Tracking("sessiond", 7))
    view.add_transition(never, TIMELINE[2], Tracking("sessiond", 8))
    assert [t.connected for t in view.transitions(never, at(3.5), at(8))] == [False]
    assert overall(series(view.transitions(never, at(3.5), at(8)), at(3.5), at(8), H)) is None


def test_before_creation_there_is_no_uptime_and_a_short_last_bucket_is_kept() -> None:
    points = series(TIMELINE, at(-2), at(1.5), H)
    assert [p.uptime for p in points] == [None, None, None, 100.0]
    assert points[-1].end - points[-1].start == timedelta(minutes=30)


def test_daily_buckets_and_simultaneous_transitions() -> None:
    flapping = [
        Transition(at(0), True, False),
        Transition(at(6), True, True),  # linked
        Transition(at(12), True, False),
        Transition(at(12), True, True),  # dropped and back at the same instant
        Transition(at(18), True, False),
    ]
    (day,) = series(flapping, at(0), at(24), DAY)
    assert day.uptime == 66.67  # 12 h connected of 18 h in service
    assert floor(at(13.7), DAY) == T0
    assert floor(at(13.7), H) == at(13)


def test_a_window_at_the_end_of_time_does_not_overflow() -> None:
    end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    transitions = [Transition(end - timedelta(days=2), True, True)]
    points = series(transitions, end - timedelta(days=1, hours=1), end, DAY)
    assert [p.uptime for p in points] == [100.0, 100.0]
    assert points[-1].end == end


def test_the_projection_records_both_flags_for_every_lifecycle_event() -> None:
    app = popo_app()
    projection = UptimeProjection(MemoryUptimeView())
    sid, uuid = create(app)
    app.record_connected(uuid, "49:1@s.whatsapp.net", "Phone")
    app.record_disconnected(uuid, "connection_lost")
    app.retry(uuid)
    app.stop(sid, ADMIN_ACTOR)
    app.reconnect(sid, ADMIN_ACTOR)
    app.record_qr_expired(uuid)
    app.issue_key(sid, "ignored", ADMIN_ACTOR)
    app.delete(sid, ADMIN_ACTOR)
    catch_up(app, projection)

    far = datetime.now(UTC) + timedelta(days=1)
    flags = [(t.running, t.connected) for t in projection.view.transitions(uuid, T0, far)]
    assert flags == [
        (True, False),  # created
        (True, True),  # connected
        (True, False),  # disconnected
        (True, False),  # retrying
        (False, False),  # stopped
        (True, False),  # reconnect asked
        (True, False),  # QR codes expired: meant to run, not connected
        (False, False),  # deleted
    ]
    assert projection.view.max_tracking_id(app.name) == app.recorder.max_notification_id()


# -- both views, fed the same events with a controlled clock ----------------------------------


class Clocked:
    """A session whose events are stamped by a clock the test moves, fed to the status and
    uptime projections as they are recorded."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.session = Session(
            id=uuid4(), name="Clocked", labels={}, requests_per_minute=None, actor=ADMIN_ACTOR
        )
        self.status = SessionStatusProjection(MemorySessionStatusView())
        self.uptime = UptimeProjection(MemoryUptimeView())
        self.position = 0
        self._record()

    @property
    def uuid(self) -> UUID:
        return self.session.id

    def wait(self, seconds: float) -> Clocked:
        self.now += timedelta(seconds=seconds)
        return self

    def do(self, command: Callable[[Session], Any]) -> Clocked:
        command(self.session)
        self._record()
        return self

    def _record(self) -> None:
        events: Sequence[Any] = self.session.collect_events()
        for event in events:
            self.position += 1
            stamped = dataclasses.replace(event, timestamp=self.now)
            for projection in (self.status, self.uptime):
                projection.process_event(stamped, Tracking("sessiond", self.position))

    def row(self) -> SessionRow:
        found = self.status.view.get_session(public_session_id(self.uuid))
        assert found is not None
        return found

    def from_status(self) -> float | None:
        return status_uptime(self.row(), self.now)

    def from_series(self, step: timedelta = DAY) -> float | None:
        start = window_start(self.now)
        transitions = self.uptime.view.transitions(self.uuid, start, self.now)
        return overall(series(transitions, start, self.now, step))

    def figure(self) -> float | None:
        """The status's figure, checked equal to the series' (by day and by hour)."""
        figure = self.from_status()
        assert self.from_series() == figure
        assert self.from_series(H) == figure
        return figure


def connect(session: Session) -> None:
    session.connect(JID, "Phone")


def test_a_session_never_linked_has_no_uptime() -> None:
    clocked = Clocked()
    assert clocked.wait(600).figure() is None
    clocked.do(lambda s: s.issue_qr("2@a", clocked.now + timedelta(seconds=60), 1, 6))
    clocked.wait(60).do(lambda s: s.expire_qr())
    assert clocked.wait(3600).figure() is None
    clocked.do(lambda s: s.request_reconnect(ADMIN_ACTOR)).wait(10)
    clocked.do(lambda s: s.disconnect("whatsapp_unreachable")).wait(100)
    assert clocked.figure() is None
    assert clocked.row().linked_at is None


def test_linked_a_second_after_creation_and_connected_since_is_100() -> None:
    clocked = Clocked().wait(1).do(connect)
    assert clocked.row().linked_at == T0 + timedelta(seconds=1)
    for seconds in (0.5, 59, 3600, 86_400 * 3):
        assert clocked.wait(seconds).figure() == 100.0


def test_the_wait_for_the_first_scan_is_not_downtime_but_a_later_one_is() -> None:
    # Waiting 10 minutes for the first scan: not in service.
    clocked = Clocked().wait(600).do(connect).wait(1800)
    assert clocked.figure() == 100.0
    # Logged out from the phone after 30 min, new QR codes for 10 min, then scanned again:
    # that wait is downtime (30 + 20 connected of 60 in service).
    clocked.do(lambda s: s.disconnect("logged_out")).wait(600)
    clocked.do(lambda s: s.request_reconnect(ADMIN_ACTOR)).do(connect).wait(1200)
    assert clocked.figure() == uptime_percent(3600, 3000) == 83.33


def test_stopped_time_counts_neither_way() -> None:
    clocked = Clocked().do(connect).wait(600)
    clocked.do(lambda s: s.disconnect("connection_lost")).wait(600)
    assert clocked.figure() == 50.0
    clocked.do(lambda s: s.stop(ADMIN_ACTOR))
    # Check the figure stands still while stopped, however long.
    for seconds in (1, 3600, 86_400):
        assert clocked.wait(seconds).figure() == 50.0
    # Reconnected (connected at once) for 20 minutes: 30 connected of 40 in service.
    clocked.do(lambda s: s.request_reconnect(ADMIN_ACTOR)).do(connect).wait(1200)
    assert clocked.figure() == 75.0


def test_a_session_out_of_service_for_longer_than_the_window_has_no_uptime() -> None:
    clocked = Clocked().do(connect).wait(3600).do(lambda s: s.stop(ADMIN_ACTOR))
    assert clocked.wait(20 * 86_400).figure() == 100.0
    # Check an event long after (its days dropped from the row) changes nothing.
    clocked.wait(20 * 86_400).do(ACTIONS["key"])
    assert clocked.figure() is None


def test_the_status_window_is_the_last_thirty_utc_days() -> None:
    # Linked an hour after creation, connected for 10 days, then down for 30 days; the
    # reading, at noon, sees only the downtime.
    midnight = datetime(2026, 3, 31, tzinfo=UTC)
    clocked = Clocked(midnight - timedelta(days=40)).wait(3600).do(connect)
    clocked.now = midnight - timedelta(days=30)
    clocked.do(lambda s: s.disconnect("connection_lost"))
    clocked.now = midnight + timedelta(hours=12)
    assert clocked.figure() == 0.0
    # Days are kept per UTC day from the first link: 10 days, the last 31 at most.
    row = clocked.row()
    assert len(row.days) == 10
    assert sum(c for _, c in row.days.values()) == pytest.approx(10 * 86_400 - 3600)


def test_a_row_written_before_the_first_link_was_kept() -> None:
    # A previous release counted from creation and kept no `linked_at`: a session it saw
    # linked (it has the JID) goes on counting from creation; one not yet linked counts
    # from its first link, its earlier accumulators dropped.
    base = SessionRow(
        session_id=public_session_id(uuid4()), name="Old", status="connected", jid=JID,
        created_at=T0, updated_at=at(1), marked_at=at(1), running_seconds=3600,
        connected_seconds=1800, days={T0.date().isoformat(): [3600.0, 1800.0]},
    )  # fmt: skip
    assert status_uptime(base, at(2)) == 75.0
    unlinked = msgspec.structs.replace(base, status="connecting", jid=None)
    assert status_uptime(unlinked, at(2)) is None
    view = MemorySessionStatusView()
    view.save_session(unlinked, Tracking("sessiond", 1))
    projection = SessionStatusProjection(view)
    connected: Any = Session.Connected
    event = connected(
        originator_id=UUID(unlinked.session_id[5:]),
        originator_version=2,
        timestamp=at(2),
        jid=JID,
        push_name="Phone",
    )
    projection.process_event(event, Tracking("sessiond", 2))
    linked = view.get_session(unlinked.session_id)
    assert linked is not None and linked.linked_at == at(2)
    assert (linked.running_seconds, linked.days) == (0.0, {})
    assert status_uptime(linked, at(3)) == 100.0


# -- the same figure from both views, whatever the history ------------------------------------

ACTIONS: dict[str, Callable[[Session], Any]] = {
    "connect": connect,
    "drop": lambda s: s.disconnect("connection_lost"),
    "logout": lambda s: s.disconnect("logged_out"),
    "retry": lambda s: s.attempt_reconnect(),
    "expire": lambda s: s.expire_qr(),
    "stop": lambda s: s.stop(ADMIN_ACTOR),
    "reconnect": lambda s: s.request_reconnect(ADMIN_ACTOR),
    "degrade": lambda s: s.lose_keepalive(),
    "key": lambda s: s.issue_key(f"key_{uuid4().hex[:16]}", "sdk_", "h", "k", ADMIN_ACTOR),
}
histories = st.lists(
    st.tuples(
        st.one_of(  # whole seconds: both views' sums are then exact
            st.integers(min_value=0, max_value=3_600),
            st.integers(min_value=0, max_value=5 * 86_400),
            st.integers(min_value=0, max_value=40 * 86_400),
        ),
        st.sampled_from(sorted(ACTIONS)),
        st.integers(min_value=0, max_value=2 * 86_400),  # when to read, after the step
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(history=histories, offset_hours=st.integers(min_value=-12, max_value=14))
def test_the_status_and_the_series_give_the_same_figure_at_every_instant(
    history: list[tuple[int, str, int]], offset_hours: int
) -> None:
    # Events stamped in any time zone: the days are UTC days whatever the zone.
    clocked = Clocked(T0.astimezone(timezone(timedelta(hours=offset_hours))))
    for gap, action, probe in history:
        clocked.wait(gap)
        try:
            clocked.do(ACTIONS[action])
        except DomainError:
            continue  # not allowed in this state: nothing recorded
        figure = clocked.figure()
        assert figure is None or 0 <= figure <= 100
        clocked.wait(probe).figure()
