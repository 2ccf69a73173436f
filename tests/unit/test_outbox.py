"""The session's outbox (domain/outbox.py) on its own, and snapshots of sessions written by the
release before it was an entity: they load, equal to their events replayed, and work on."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from domain.errors import IdempotencyKeyReused, InvalidTransition, InvalidValue, QueueFull
from domain.outbox import (
    RECENT_INBOUND,
    RECENT_MESSAGES,
    Outbox,
    QueuedMessage,
    message_fingerprint,
)
from domain.session import Session
from domain.values import ADMIN_ACTOR, MAX_QUEUED_MESSAGES
from tests.fixtures import FIXTURES
from tests.unit.helpers import popo_app, replay

DUMP = FIXTURES / "previous_release.sql"
_ROW = re.compile(
    r"^INSERT INTO public\.(sessiond_events|sessiond_snapshots) VALUES "
    r"\('([0-9a-f-]{36})', (\d+), '([^']*)', '\\x([0-9a-f]*)'"
)
TO = "14155550123@s.whatsapp.net"


def stored_rows(table: str) -> list[StoredEvent]:
    """The rows of `table` in the previous release's database dump, as stored."""
    found = []
    for line in DUMP.read_text().splitlines():
        match = _ROW.match(line)
        if match and match.group(1) == table:
            found.append(
                StoredEvent(
                    originator_id=UUID(match.group(2)),
                    originator_version=int(match.group(3)),
                    topic=match.group(4),
                    state=bytes.fromhex(match.group(5)),
                )
            )
    return sorted(found, key=lambda e: (str(e.originator_id), e.originator_version))


def add(outbox: Outbox, message_id: str, key: str | None = None, text: str = "hi") -> None:
    outbox.check_can_queue(message_id)
    outbox.add(
        QueuedMessage(message_id, TO, len(outbox.queue) + 1), message_fingerprint(TO, text), key
    )


def test_the_queue_is_sent_in_order_and_remembered_by_whatsapp_id() -> None:
    outbox = Outbox()
    add(outbox, "m1", key="k1")
    add(outbox, "m2")
    next_message = outbox.next()
    assert next_message is not None and next_message.message_id == "m1"
    with pytest.raises(InvalidTransition):
        outbox.check_next("m2", "send")
    outbox.check_next("m1", "send")
    outbox.sent("m1", "WA1")
    sent = outbox.sent_as("WA1")
    assert sent is not None and sent.message_id == "m1" and sent.status == "sent"
    assert outbox.remembers("WA1") and not outbox.remembers("WA2")
    outbox.failed("m2")
    assert outbox.next() is None and outbox.recent["m2"].status == "failed"
    # Check an idempotency key answers its message, and refuses another text.
    assert outbox.replayed("k1", TO, "hi") == "m1"
    with pytest.raises(IdempotencyKeyReused):
        outbox.replayed("k1", TO, "another text")
    with pytest.raises(InvalidValue):
        outbox.check_can_queue("m1")


def test_the_queue_has_a_cap_and_the_memories_a_length() -> None:
    outbox = Outbox()
    for n in range(MAX_QUEUED_MESSAGES):
        add(outbox, f"q{n}")
    with pytest.raises(QueueFull):
        outbox.check_can_queue("one more")
    # Check queued messages are remembered however long the queue.
    assert len(outbox.recent) == MAX_QUEUED_MESSAGES >= RECENT_MESSAGES
    for n in range(MAX_QUEUED_MESSAGES):
        outbox.sent(f"q{n}", f"WA{n}")
    add(outbox, "last")
    assert len(outbox.recent) == RECENT_MESSAGES and "last" in outbox.recent
    for n in range(RECENT_INBOUND + 3):
        outbox.receive(f"IN{n}")
    assert len(outbox.received) == RECENT_INBOUND
    assert outbox.has_received(f"IN{RECENT_INBOUND + 2}") and not outbox.has_received("IN0")


def test_a_snapshot_of_the_previous_release_loads_as_its_events_replayed() -> None:
    """Snapshots written before the outbox was an entity (tests/fixtures, made by the
    previous release) load through `Session.upcast_v1_v2`, equal to the same events replayed
    by this code, and the session works on from them."""
    app = popo_app()
    snapshots = stored_rows("sessiond_snapshots")
    events = stored_rows("sessiond_events")
    assert [s.originator_version for s in snapshots] == [50, 100]
    for stored in snapshots:
        assert b'"recent_inbound"' in stored.state and b"class_version" not in stored.state
        snapshot = app.mapper.to_domain_event(stored)
        assert isinstance(snapshot, Snapshot)
        restored = snapshot.mutate(None)
        assert isinstance(restored, Session)
        own = [
            app.mapper.to_domain_event(e)
            for e in events
            if e.originator_id == stored.originator_id
            and e.originator_version <= stored.originator_version
        ]
        replayed = replay(own)
        assert restored.version == replayed.version == stored.originator_version
        # The old snapshot counted no sends: its send log is unknown (rebuilt from the
        # events when the application loads the session), the rest is the same.
        assert restored.outbox.sends is None and replayed.outbox.sends is not None
        restored.outbox.sends = replayed.outbox.sends
        assert restored.outbox == replayed.outbox
        # Nor did it keep when WhatsApp was last heard (the silence watchdog's clock): the
        # session is watched again from the next word heard, as the README says.
        unknown_then = {"_pending_events", "heard_at", "receives", "silent_since"}
        assert restored.heard_at is None and restored.silent_since is None
        assert {k: v for k, v in vars(restored).items() if k not in unknown_then} == {
            k: v for k, v in vars(replayed).items() if k not in unknown_then
        }
    # The snapshot at 50 was taken while texts waited to be sent; the one at 100 after
    # some were received.
    first: Any = app.mapper.to_domain_event(snapshots[0])
    first = first.mutate(None)
    assert len(first.outbox.queue) > 40 and first.outbox.received == []
    assert all(first.outbox.recent[m.message_id].status == "queued" for m in first.outbox.queue)
    # Check the session restored from the old snapshot works on: send, fail, receive twice.
    session = first
    queued = session.next_message()
    assert queued is not None
    session.mark_sent(queued.message_id, "WA-new")
    assert session.remembers("WA-new")
    session.queue_message("msg_" + "b" * 32, TO, "new", None, ADMIN_ACTOR)
    now = datetime.now(UTC)
    kwargs: dict[str, Any] = {
        "whatsapp_id": "IN-1",
        "sender": TO,
        "chat": TO,
        "text": "hello",
        "push_name": "Someone",
        "sent_at": now,
    }
    assert session.receive_message(message_id="msg_" + "c" * 32, **kwargs)
    assert not session.receive_message(message_id="msg_" + "d" * 32, **kwargs)
    # Check a snapshot taken now records the entity and its version, and loads back.
    again = Snapshot.take(session)
    assert again.state["class_version"] == Session.class_version == 2
    reloaded: Any = app.mapper.to_domain_event(app.mapper.to_stored_event(again))
    reloaded = reloaded.mutate(None)
    assert reloaded.outbox == session.outbox
