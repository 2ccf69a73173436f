"""The live stream's decisions: stream items are the webhook bodies, where a stream resumes,
type filters, and the window of recent events (bounded, and telling a stream that fell
behind it)."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest

from domain.session import Session
from domain.values import public_session_id
from domain.webhook import EVENT_TYPES
from projections.livefeed import (
    FeedItem,
    FeedWindow,
    InvalidEventTypes,
    InvalidPosition,
    Selection,
    feed_item,
    parse_types,
    resume_position,
)
from projections.webhooks import webhook_body


def item(position: int, session: str = "sess_a", kind: str = "message.received") -> FeedItem:
    return FeedItem(position, session, kind, b'{"x": "%d"}' % position)


def test_a_stream_item_is_the_webhook_body_of_the_event() -> None:
    session = Session(
        id=uuid4(), name="Support", labels={"region": "eu"}, requests_per_minute=None, actor="a"
    )
    created = session.collect_events()[0]
    found = feed_item(42, created)
    assert found is not None
    assert found.position == 42
    assert found.type == "session.created"
    assert found.session_id == public_session_id(session.id)
    assert json.loads(found.body) == json.loads(json.dumps(webhook_body(created)))


def test_an_event_that_is_no_webhook_event_is_no_stream_item() -> None:
    assert feed_item(1, object()) is None


@pytest.mark.parametrize(
    ("last_event_id", "after", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("17", None, 17),
        ("17", "3", 17),  # a browser reconnecting sends the URL it first opened: the id wins
        (None, "3", 3),
        (" 5 ", None, 5),
        (None, "0", 0),
    ],
)
def test_where_a_stream_resumes(
    last_event_id: str | None, after: str | None, expected: int | None
) -> None:
    assert resume_position(last_event_id, after) == expected


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", "9" * 19, "٣", "1e3", "0x10"])
def test_a_position_that_is_no_position_is_refused(bad: str) -> None:
    with pytest.raises(InvalidPosition):
        resume_position(bad, None)
    with pytest.raises(InvalidPosition):
        resume_position(None, bad)


def test_type_filters_name_known_types_only() -> None:
    assert parse_types([]) == frozenset(EVENT_TYPES)
    assert parse_types(["session.created, message.received"]) == {
        "session.created",
        "message.received",
    }
    assert parse_types(["session.qr", "session.qr,"]) == {"session.qr"}
    with pytest.raises(InvalidEventTypes, match=r"no\.such"):
        parse_types(["session.qr,no.such"])


def test_a_selection_wants_its_session_and_types() -> None:
    selection = Selection("sess_a", frozenset({"message.received"}))
    assert selection.wants(item(1))
    assert not selection.wants(item(1, "sess_b"))
    assert not selection.wants(item(1, kind="session.qr"))
    assert selection.of_session(item(1, kind="session.qr"))
    assert Selection().wants(item(1, "sess_b"))


def test_the_window_gives_what_follows_a_position_and_where_the_stream_is_after() -> None:
    window = FeedWindow(10, capacity=100, max_bytes=1 << 20)
    window.add(11, item(11))
    window.add(12, None)  # not a stream event: covered all the same
    window.add(13, item(13, "sess_b"))
    window.add(14, item(14))
    every = Selection()
    taken = window.take(10, every, 100)
    assert [i.position for i in taken.items] == [11, 13, 14]
    assert taken.position == 14
    assert not taken.lost
    # Check one session's stream is at the window's end, past other sessions' events.
    taken = window.take(11, Selection("sess_a"), 100)
    assert [i.position for i in taken.items] == [14]
    assert taken.position == 14
    # Check a limit stops at the last item taken, so the rest follows.
    taken = window.take(10, every, 2)
    assert [i.position for i in taken.items] == [11, 13]
    assert taken.position == 13
    # Check a stream ahead of the window waits (the position stays).
    assert window.take(20, every, 10) == window.take(20, every, 10)
    assert window.take(20, every, 10).position == 20
    assert window.take(20, every, 10).items == []


def test_the_window_is_bounded_and_tells_a_stream_that_fell_behind_it() -> None:
    window = FeedWindow(0, capacity=3, max_bytes=1 << 20)
    for position in range(1, 8):
        window.add(position, item(position))
    assert len(window) == 3
    assert window.start == 4  # it covers 5, 6, 7
    assert window.take(3, Selection(), 10).lost
    assert window.take(3, Selection(), 10).items == []
    assert [i.position for i in window.take(4, Selection(), 10).items] == [5, 6, 7]
    # Check the bodies' size bounds it too.
    small = FeedWindow(0, capacity=100, max_bytes=30)
    for position in range(1, 10):
        small.add(position, item(position))
    assert small.bytes <= 30
    assert small.take(small.start, Selection(), 100).items[-1].position == 9
    # Check a notification seen twice (a reader that read it again) changes nothing.
    window.add(7, item(7))
    assert [i.position for i in window.take(4, Selection(), 10).items] == [5, 6, 7]


def test_the_window_keeps_its_promise_over_many_events() -> None:
    window = FeedWindow(0, capacity=50, max_bytes=1 << 20)
    sent: list[int] = []
    position = 0
    for n in range(1, 5000):
        window.add(n, item(n) if n % 3 else None)
        if n % 7 == 0:
            taken = window.take(position, Selection(), 10)
            assert not taken.lost
            sent += [i.position for i in taken.items]
            position = taken.position
    rest = window.take(position, Selection(), 10_000)
    sent += [i.position for i in rest.items]
    assert sent == [n for n in range(1, 5000) if n % 3]
