"""The tamper-evident history, as pure functions: the canonical encoding of a chained event
and of a checkpoint, and a verifier that walks the chain and finds the first break.

The database computes each event's hash as it is recorded (infra/postgres/migrations/
0003.audit-chain.sql); this module computes the same hashes again, from the rows, an export or
anywhere else, so that a change to any of them is found at its position. The encoding is
documented byte by byte in the README ("Tamper-evident history").
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

#: The previous hash of the first event in the chain.
GENESIS = bytes(32)
#: What a checkpoint's signature covers starts with this, so that it signs nothing else.
CHECKPOINT_DOMAIN = b"sessiond audit checkpoint v1\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def microseconds(when: datetime) -> int:
    """`when` as whole microseconds since 1970-01-01T00:00:00Z (exact: no float)."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class ChainedEvent:
    """An event as the log stores it, with the hash stored beside it."""

    position: int
    originator_id: UUID
    version: int
    topic: str
    recorded_at: datetime | None  # None only for a row written around the chain
    state: bytes
    hash: bytes | None


def event_hash(previous: bytes, event: ChainedEvent) -> bytes:
    """SHA-256 over the canonical encoding of `previous` and the event as stored."""
    topic = event.topic.encode()
    digest = hashlib.sha256(previous)
    digest.update(
        struct.pack(
            ">q16sqqi",
            event.position,
            event.originator_id.bytes,
            event.version,
            0 if event.recorded_at is None else microseconds(event.recorded_at),
            len(topic),
        )
    )
    digest.update(topic)
    digest.update(struct.pack(">q", len(event.state)))
    digest.update(event.state)
    return digest.digest()


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of the chain: `events` events up to `position`, ending in `hash`."""

    position: int
    events: int
    hash: bytes
    signed_at: datetime
    public_key: bytes
    signature: bytes


def checkpoint_message(position: int, events: int, head: bytes, signed_at: datetime) -> bytes:
    """The bytes a checkpoint's Ed25519 signature is over."""
    return (
        CHECKPOINT_DOMAIN
        + struct.pack(">qq", position, events)
        + head
        + struct.pack(">q", microseconds(signed_at))
    )


@dataclass(frozen=True)
class Head:
    """The chain's end as last witnessed: its last event's position and hash, and how many
    events the chain has up to it (advanced to the log's end by each checkpointer tick,
    check and export; never moved past events that are no longer there as witnessed)."""

    position: int
    events: int
    hash: bytes


@dataclass(frozen=True)
class Break:
    """The first position where the history is not what was recorded, and what is wrong."""

    position: int
    problem: str


@dataclass(frozen=True)
class Verified:
    """The chain holds: `events` events up to `position`, checked from position `start`
    (0: the first event; else a checkpoint's); the last good checkpoint."""

    events: int
    position: int
    last_checkpoint: Checkpoint | None
    start: int = 0


#: Whether `signature` is `public_key`'s over `message` (Ed25519).
SignatureCheck = Callable[[bytes, bytes, bytes], bool]


class ChainWalk:
    """Walks a chain in notification order from a known start (the genesis, or a checkpoint
    already verified) and stops at the first break.

    Feed it events with `add` (in order), each checkpoint with `checkpoint` right after the
    event at its position, and `finish` compares the end with the chain's witnessed end.
    """

    def __init__(
        self,
        public_key: bytes,
        check_signature: SignatureCheck,
        *,
        previous: bytes = GENESIS,
        position: int = 0,
        events: int = 0,
    ) -> None:
        self.public_key = public_key
        self.check_signature = check_signature
        self.previous = previous
        self.position = position
        self.start = position
        self.events = events
        self.last_checkpoint: Checkpoint | None = None
        self.broken: Break | None = None
        # The hash before the last event: an event found to chain to it instead of to the
        # last one means the last one was inserted.
        self._before_last: bytes | None = None

    def add(self, event: ChainedEvent) -> Break | None:
        """Check one more event; the break it reveals, if any (then the walk stops)."""
        if self.broken is not None:
            return self.broken
        if event.position <= self.position:
            return self.fail(
                event.position,
                f"out of order: comes after position {self.position} in the log",
            )
        if event.hash is None or event.recorded_at is None:
            missing = "hash" if event.hash is None else "recording time"
            return self.fail(event.position, f"the event has no {missing} (inserted)")
        expected = event_hash(self.previous, event)
        if event.hash != expected:
            if self._before_last is not None and event.hash == event_hash(self._before_last, event):
                return self.fail(
                    self.position,
                    f"an event was inserted here: the next event (at position {event.position}) "
                    "chains to the event before this one",
                )
            return self.fail(
                event.position,
                "the event does not match its hash: it was edited or moved here, or an event "
                f"between it and position {self.position} was deleted",
            )
        self._before_last = self.previous
        self.previous = expected
        self.position = event.position
        self.events += 1
        return None

    def checkpoint(self, checkpoint: Checkpoint) -> Break | None:  # noqa: PLR0911
        """Check a checkpoint right after the event at its position was added."""
        if self.broken is not None:
            return self.broken
        message = checkpoint_message(
            checkpoint.position, checkpoint.events, checkpoint.hash, checkpoint.signed_at
        )
        if checkpoint.public_key != self.public_key:
            return self.fail(
                checkpoint.position, "a checkpoint here is signed by another key than the audit key"
            )
        if not self.check_signature(self.public_key, checkpoint.signature, message):
            return self.fail(checkpoint.position, "a checkpoint here has a wrong signature")
        if checkpoint.position != self.position:
            return self.fail(
                checkpoint.position, "a checkpoint signed this position, but no event is there"
            )
        if checkpoint.hash != self.previous:
            return self.fail(
                checkpoint.position,
                "the chain here differs from the signed checkpoint (rewritten history)",
            )
        if checkpoint.events != self.events:
            return self.fail(
                checkpoint.position, "the number of events differs from the signed checkpoint"
            )
        self.last_checkpoint = checkpoint
        return None

    def finish(self, head: Head | None) -> Break | Verified:  # noqa: PLR0911
        """The verdict once every event up to the witnessed end `head` has been added: the
        walk must end there, with the witnessed hash and number of events."""
        if self.broken is not None:
            return self.broken
        if head is None:
            if self.events:
                return self.fail(self.start, "the log has events but no chain head")
            return Verified(self.events, self.position, self.last_checkpoint, self.start)
        if head.position > self.position:
            return self.fail(
                head.position,
                f"the log ends at position {self.position}, but the chain was witnessed up to "
                f"an event at position {head.position}: events after {self.position} were "
                "deleted",
            )
        if head.hash != self.previous:
            return self.fail(
                head.position, "the event here differs from the chain's end witnessed here"
            )
        if head.events != self.events:
            return self.fail(
                head.position,
                f"{self.events} events are chained, the chain's end witnessed here counts "
                f"{head.events}",
            )
        return Verified(self.events, self.position, self.last_checkpoint, self.start)

    def fail(self, position: int, problem: str) -> Break:
        """Stop the walk with a break at `position`."""
        self.broken = Break(position, problem)
        return self.broken


def walk(
    events: Iterable[ChainedEvent],
    checkpoints: Iterable[Checkpoint],
    head: Head | None,
    chain: ChainWalk,
) -> Break | Verified:
    """Verify a chain with `chain`: `events` up to the witnessed end `head` and the
    checkpoints up to it, each in position order (see `ChainWalk.finish`)."""
    pending = iter(checkpoints)
    waiting = next(pending, None)
    for event in events:
        while waiting is not None and waiting.position < event.position:
            chain.checkpoint(waiting)  # no event at its position: a break
            waiting = next(pending, None)
        if chain.add(event) is not None:
            break
        while waiting is not None and waiting.position == event.position:
            chain.checkpoint(waiting)
            waiting = next(pending, None)
        if chain.broken is not None:
            break
    while chain.broken is None and waiting is not None:
        chain.checkpoint(waiting)  # beyond the last event
        waiting = next(pending, None)
    if chain.broken is not None:
        return chain.broken
    return chain.finish(head)


def checkpoint_due(
    head: Head,
    last: Checkpoint | None,
    oldest_unsigned_at: datetime | None,
    now: datetime,
    *,
    every_events: int,
    interval: float,
) -> bool:
    """Whether the head should be signed now: once `every_events` events are unsigned, or
    once the oldest unsigned event has waited `interval` seconds (never when all are signed)."""
    signed_position, signed_events = (last.position, last.events) if last else (0, 0)
    if head.events == 0 or head.position <= signed_position:
        return False
    if head.events - signed_events >= every_events:
        return True
    return oldest_unsigned_at is not None and (now - oldest_unsigned_at).total_seconds() >= interval
