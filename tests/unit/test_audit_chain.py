"""The audit chain's pure parts: the encoding (the README's worked example), the walk's
verdicts, and when a checkpoint is due."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from application.audit import (
    GENESIS,
    Break,
    ChainedEvent,
    ChainWalk,
    Checkpoint,
    Head,
    Verified,
    checkpoint_due,
    checkpoint_message,
    event_hash,
    microseconds,
    walk,
)
from infra.settings import Settings, SettingsError

ORIGINATOR = UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
KEY = b"k" * 32
T0 = datetime(2026, 12, 5, 21, 0, 0, 123456, tzinfo=UTC)


def fake_signature(message: bytes) -> bytes:
    return hashlib.sha256(KEY + message).digest()


def fake_check(public_key: bytes, signature: bytes, message: bytes) -> bool:
    return public_key == KEY and signature == fake_signature(message)


def test_the_readmes_worked_example_hashes_as_documented() -> None:
    first = ChainedEvent(
        1, ORIGINATOR, 1, "sessiond:Session.Created", T0, b'{"name":"Support"}', None
    )
    assert microseconds(T0) == 1796504400123456
    assert (
        event_hash(GENESIS, first).hex()
        == "ad1faf00a764edf83da3dffd14cf41f6dd60e842d20e9972d3bb5e86c9b67394"
    )
    second = ChainedEvent(
        2,
        ORIGINATOR,
        2,
        "sessiond:Session.Stopped",
        datetime(2026, 12, 5, 21, 0, 5, tzinfo=UTC),
        b"{}",
        None,
    )
    assert (
        event_hash(event_hash(GENESIS, first), second).hex()
        == "40806822becbb2b30709451eb80051672aa1f65ee0c29043301dcabb863bad25"
    )
    message = checkpoint_message(
        1, 1, event_hash(GENESIS, first), datetime(2026, 12, 5, 21, 0, 1, tzinfo=UTC)
    )
    assert len(message) == 85
    assert message.hex() == (
        "73657373696f6e6420617564697420636865636b706f696e742076310a"
        "00000000000000010000000000000001"
        "ad1faf00a764edf83da3dffd14cf41f6dd60e842d20e9972d3bb5e86c9b67394"
        "000661e946a8b640"
    )


def test_microseconds_are_exact_far_from_the_epoch() -> None:
    before = datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert microseconds(before) == -2208988800 * 1_000_000 + 1
    assert microseconds(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == (
        253402300799999999
    )


def chain(count: int, gap_at: int | None = None) -> list[ChainedEvent]:
    events, previous, position = [], GENESIS, 0
    for n in range(count):
        position += 2 if n == gap_at else 1
        event = ChainedEvent(
            position, ORIGINATOR, n + 1, "t", T0 + timedelta(seconds=n), bytes([n]), None
        )
        event = replace(event, hash=event_hash(previous, event))
        previous = event.hash or b""
        events.append(event)
    return events


def head_of(events: list[ChainedEvent]) -> Head:
    return Head(events[-1].position, len(events), events[-1].hash or b"")


def signed(event: ChainedEvent, events: int) -> Checkpoint:
    assert event.hash is not None
    message = checkpoint_message(event.position, events, event.hash, T0)
    return Checkpoint(event.position, events, event.hash, T0, KEY, fake_signature(message))


def verdict(
    events: list[ChainedEvent],
    checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
    head: Head | None = None,
) -> Break | Verified:
    return walk(events, checkpoints, head, ChainWalk(KEY, fake_check))


def test_an_intact_chain_with_gaps_in_positions_verifies() -> None:
    events = chain(6, gap_at=3)
    checkpoint = signed(events[3], 4)
    assert verdict(events, [checkpoint], head_of(events)) == Verified(6, 7, checkpoint, 0)


def test_each_kind_of_change_breaks_the_chain_at_its_position() -> None:
    events = chain(6)
    head = head_of(events)
    edited = [*events[:2], replace(events[2], state=b"x"), *events[3:]]
    assert verdict(edited, [], head) == Break(3, edited_problem(3, 2))
    deleted = events[:2] + events[3:]
    found = verdict(deleted, [], head)
    assert isinstance(found, Break) and found.position == 4 and "deleted" in found.problem
    swapped = [*events[:2], replace(events[3], position=3), replace(events[2], position=4)]
    found = verdict([*swapped, *events[4:]], [], head)
    assert isinstance(found, Break) and found.position == 3
    out_of_order = [*events[:3], events[1], *events[3:]]
    found = verdict(out_of_order, [], head)
    assert isinstance(found, Break) and found.position == 2 and "out of order" in found.problem
    unhashed = [*events[:5], replace(events[5], hash=None)]
    assert verdict(unhashed, [], head) == Break(6, "the event has no hash (inserted)")


def edited_problem(position: int, before: int) -> str:
    return (
        "the event does not match its hash: it was edited or moved here, or an event "
        f"between it and position {before} was deleted"
    )


def test_an_event_inserted_with_a_good_hash_is_found_at_its_own_position() -> None:
    events = chain(4, gap_at=2)  # positions 1, 2, 4, 5
    intruder = ChainedEvent(3, ORIGINATOR, 99, "t", T0, b"forged", None)
    intruder = replace(intruder, hash=event_hash(events[1].hash or b"", intruder))
    found = verdict([*events[:2], intruder, *events[2:]], [], head_of(events))
    assert isinstance(found, Break) and found.position == 3 and "inserted" in found.problem


def test_the_witnessed_end_finds_changes_at_the_end() -> None:
    events = chain(5)
    head = head_of(events)
    found = verdict(events[:4], [], head)
    assert isinstance(found, Break) and found.position == 5 and "deleted" in found.problem
    found = verdict(events, [], replace(head, hash=bytes(32)))
    assert isinstance(found, Break) and found.position == 5 and "differs" in found.problem
    found = verdict(events, [], replace(head, events=7))
    assert isinstance(found, Break) and found.position == 5


@pytest.mark.parametrize(
    ("forgery", "problem"),
    [
        ("signature", "wrong signature"),
        ("key", "another key"),
        ("hash", "differs from the signed checkpoint"),
        ("events", "number of events differs"),
        ("position", "no event is there"),
    ],
)
def test_a_checkpoint_that_does_not_match_breaks_at_its_position(
    forgery: str, problem: str
) -> None:
    events = chain(5)
    good = signed(events[2], 3)
    bad = {
        "signature": replace(good, signature=b"\0" * 64),
        "key": replace(good, public_key=b"o" * 32),
        "hash": signed(replace(events[2], hash=b"h" * 32), 3),
        "events": signed(events[2], 4),
        "position": signed(replace(events[2], position=10), 3),
    }[forgery]
    found = verdict(events, [bad], head_of(events))
    assert isinstance(found, Break) and found.position == bad.position
    assert problem in found.problem


def test_a_walk_from_a_checkpoint_goes_on_from_its_hash_and_count() -> None:
    events = chain(6)
    checkpoint = signed(events[2], 3)
    walker = ChainWalk(
        KEY, fake_check, previous=checkpoint.hash, position=checkpoint.position, events=3
    )
    assert walker.checkpoint(checkpoint) is None
    assert walk(events[3:], [], head_of(events), walker) == Verified(6, 6, checkpoint, 3)


NOW = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("head", "last", "oldest_age", "due"),
    [
        (Head(0, 0, GENESIS), None, None, False),  # nothing recorded
        (Head(5, 5, GENESIS), None, 10.0, False),  # too few, too young
        (Head(10, 10, GENESIS), None, 10.0, True),  # N unsigned
        (Head(5, 5, GENESIS), None, 3600.0, True),  # waited the interval
        (Head(14, 14, GENESIS), "at 5", 10.0, False),  # 9 unsigned since
        (Head(15, 15, GENESIS), "at 5", 10.0, True),
        (Head(5, 5, GENESIS), "at 5", 7200.0, False),  # all signed
    ],
)
def test_a_checkpoint_is_due_after_n_events_or_when_an_event_waited_the_interval(
    head: Head, last: str | None, oldest_age: float | None, due: bool
) -> None:
    checkpoint = Checkpoint(5, 5, GENESIS, NOW, KEY, b"") if last else None
    oldest = None if oldest_age is None else NOW - timedelta(seconds=oldest_age)
    assert checkpoint_due(head, checkpoint, oldest, NOW, every_events=10, interval=3600.0) is due


@pytest.mark.parametrize("value", ["not base64!", "c2hvcnQ=", "A" * 60])
def test_a_malformed_audit_signing_key_stops_start_up_with_one_line(value: str) -> None:
    with pytest.raises(SettingsError, match="SESSIOND_AUDIT_SIGNING_KEY must be the base64"):
        Settings.from_env({"SESSIOND_AUDIT_SIGNING_KEY": value})
    good = "A" * 43 + "="  # 32 bytes
    assert Settings.from_env({"SESSIOND_AUDIT_SIGNING_KEY": good}).audit_signing_key == good
