"""The status projection's uptime accumulators, against the straightforward first version.

`advance` runs for most events and for every event of a rebuild, so it was rewritten to copy
only what changes; it must give exactly (bit for bit) what the first version gave.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.status import UPTIME_DAYS, SessionRow, advance, window_start
from projections.uptime import split_by_day

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def referencesplit_by_day(start: datetime, end: datetime) -> list[tuple[str, float]]:
    """Day by day: each UTC day's share of [start, end), from its midnights."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    parts = []
    day = start.date()
    while (begin := max(start, datetime.combine(day, time(), UTC))) < end:
        day_end = min(end, datetime.combine(day + timedelta(days=1), time(), UTC))
        parts.append((day.isoformat(), (day_end - begin).total_seconds()))
        day += timedelta(days=1)
    return parts


def reference_advance_uptime(row: SessionRow, until: datetime) -> SessionRow:
    if row.marked_at is None or until <= row.marked_at:
        return msgspec.structs.replace(row, marked_at=until)
    seconds = (until - row.marked_at).total_seconds()
    running, connected = row.running_seconds, row.connected_seconds
    days = {day: list(pair) for day, pair in row.days.items()}
    if row.desired == "running" and row.linked_at is not None:
        is_connected = row.status == "connected"
        running += seconds
        if is_connected:
            connected += seconds
        for day, day_seconds in referencesplit_by_day(row.marked_at, until):
            pair = days.setdefault(day, [0.0, 0.0])
            pair[0] += day_seconds
            if is_connected:
                pair[1] += day_seconds
    oldest = window_start(until, UPTIME_DAYS + 1).date().isoformat()
    days = {day: pair for day, pair in days.items() if day >= oldest}
    return msgspec.structs.replace(
        row, running_seconds=running, connected_seconds=connected, marked_at=until, days=days
    )


steps = st.lists(
    st.tuples(
        st.one_of(  # ms after the last mark: often within a day, sometimes days later
            st.integers(min_value=-3_600, max_value=3_600_000),
            st.integers(min_value=0, max_value=4 * 86_400_000),
        ),
        st.sampled_from(["connected", "connecting", "disconnected"]),
        st.sampled_from(["running", "running", "running", "stopped", "deleted"]),
    ),
    min_size=1,
    max_size=60,
)


def assert_same_as_the_first_version(
    start: datetime, steps: list[tuple[int, str, str]]
) -> SessionRow:
    row = SessionRow(
        session_id="sess_a", name="a", status="connecting", created_at=start,
        updated_at=start, marked_at=start, linked_at=start,
    )  # fmt: skip
    expected, now = row, start
    for millis, status, desired in steps:
        now += timedelta(milliseconds=millis)
        expected = msgspec.structs.replace(
            reference_advance_uptime(expected, now), status=status, desired=desired
        )
        row = msgspec.structs.replace(advance(row, now), status=status, desired=desired)
        assert msgspec.json.encode(row) == msgspec.json.encode(expected)
        assert row == expected
    return row


@settings(max_examples=300, deadline=None)
@given(steps=steps, offset_hours=st.integers(min_value=-12, max_value=14))
def test_the_accumulators_equal_the_first_versions_bit_for_bit(
    steps: list[tuple[int, str, str]], offset_hours: int
) -> None:
    # Timestamps in any time zone: the days are UTC days whatever the zone of the event.
    assert_same_as_the_first_version(T0.astimezone(timezone(timedelta(hours=offset_hours))), steps)


def test_forty_days_of_hourly_events_keep_the_last_thirty_one_days() -> None:
    hourly = [
        (3_600_000 + n % 7, ("connected", "disconnected")[n % 2], "running") for n in range(40 * 24)
    ]
    row = assert_same_as_the_first_version(T0 + timedelta(minutes=30), hourly)
    assert len(row.days) == UPTIME_DAYS + 1


def test_a_previous_row_keeps_its_own_accumulators() -> None:
    row = SessionRow(
        session_id="sess_a", name="a", status="connected", created_at=T0, updated_at=T0,
        marked_at=T0, linked_at=T0, days={T0.date().isoformat(): [1.0, 1.0]},
    )  # fmt: skip
    later = advance(row, T0 + timedelta(hours=1))
    assert later.days[T0.date().isoformat()] == [3601.0, 3601.0]
    assert row.days == {T0.date().isoformat(): [1.0, 1.0]}


def test_an_interval_is_split_at_each_utc_midnight() -> None:
    start = T0 + timedelta(hours=22)
    assert split_by_day(start, start + timedelta(hours=28)) == [
        ("2026-01-01", 7200.0),
        ("2026-01-02", 86400.0),
        ("2026-01-03", 7200.0),
    ]
    assert split_by_day(start, start + timedelta(hours=1)) == [("2026-01-01", 3600.0)]
    assert split_by_day(start, start) == []
