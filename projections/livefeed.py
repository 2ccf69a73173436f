"""The live event stream's decisions: what a recorded event is on the stream (the webhook's
type and body, built by `projections.webhooks.webhook_body`), which of them a stream wants,
where a stream resumes, and the window of recent events a process keeps for its streams.

A stream's position is a position in the log (a notification id): every event of the log up
to it has been sent to the client or was not for it. The window holds the last events of the
log and covers every position in ``(start, last]``: a stream at or after `start` takes what
follows from it, one behind it reads the log itself, page by page.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from domain.webhook import EVENT_TYPES
from projections.webhooks import webhook_body

_encoder = msgspec.json.Encoder()
#: The most digits a position may have (PostgreSQL's bigint).
MAX_POSITION_DIGITS = 18


@dataclass(frozen=True)
class FeedItem:
    """One event as the stream sends it: its position, session, type and webhook body."""

    position: int
    session_id: str
    type: str
    body: bytes  # the webhook body, ``{"type", "timestamp", "data"}``, as JSON


def feed_item(position: int, event: Any) -> FeedItem | None:
    """The stream item of the event recorded at `position`, or None if it is not one."""
    body = webhook_body(event)
    if body is None:
        return None
    session_id = body["data"]["sessionId"] or ""  # "": a deployment's alert
    return FeedItem(position, session_id, body["type"], _encoder.encode(body))


@dataclass(frozen=True)
class Selection:
    """What a stream sends: one session's events (None: every session's), of some types."""

    session_id: str | None = None
    types: frozenset[str] = frozenset(EVENT_TYPES)

    def of_session(self, item: FeedItem) -> bool:
        return self.session_id is None or item.session_id == self.session_id

    def wants(self, item: FeedItem) -> bool:
        return self.of_session(item) and item.type in self.types


class InvalidPosition(ValueError):
    """A resume position that is not a position of the log."""


def parse_position(text: str, where: str) -> int:
    """A position as a client sends it back (the `id` of an event it received)."""
    value = text.strip()
    if not value.isdigit() or not value.isascii() or len(value) > MAX_POSITION_DIGITS:
        raise InvalidPosition(f"{where} must be the id of an event of this stream, not {text!r}")
    return int(value)


def resume_position(last_event_id: str | None, after: str | None) -> int | None:
    """Where a stream starts: after `Last-Event-ID` if sent (a browser reconnecting sends it,
    with the URL it first opened, so it wins over `after`), else after `after`; None: from
    the head of the log (only what is recorded from now on)."""
    if last_event_id is not None and last_event_id.strip():
        return parse_position(last_event_id, "Last-Event-ID")
    if after is not None:
        return parse_position(after, "after")
    return None


def parse_types(values: Iterable[str]) -> frozenset[str]:
    """The event types of ``?types=a,b`` (or repeated): every known type when none is given;
    `InvalidEventTypes` names the unknown ones."""
    named = {part.strip() for value in values for part in value.split(",") if part.strip()}
    if not named:
        return frozenset(EVENT_TYPES)
    unknown = sorted(named - set(EVENT_TYPES))
    if unknown:
        raise InvalidEventTypes(
            f"unknown event types {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}"
        )
    return frozenset(named)


class InvalidEventTypes(ValueError):
    """A type filter naming a type that is no event type."""


@dataclass(frozen=True)
class Taken:
    """What a stream took from the window: its session's items after its position, at most
    the number asked, and the position it is at after them. `lost`: the window no longer
    covers the position the stream was at (it fell too far behind: nothing was taken)."""

    items: list[FeedItem]
    position: int
    lost: bool = False


class FeedWindow:
    """The last events of the log (at most `capacity` items and about `max_bytes` of bodies):
    it covers every position in ``(start, last]``. Not thread-safe: its owner locks."""

    def __init__(self, start: int, capacity: int, max_bytes: int) -> None:
        self.start = start
        self.last = start
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: list[FeedItem] = []
        self._positions: list[int] = []
        self._first = 0  # index of the oldest item kept (items before it are dropped)

    def __len__(self) -> int:
        return len(self._items) - self._first

    def add(self, position: int, item: FeedItem | None) -> None:
        """The log's next notification (`item` None: not a stream event)."""
        if position <= self.last:
            return
        self.last = position
        if item is None:
            return
        self._items.append(item)
        self._positions.append(position)
        self.bytes += len(item.body)
        while len(self) > self.capacity or (self.bytes > self.max_bytes and len(self) > 1):
            dropped = self._items[self._first]
            self._first += 1
            self.bytes -= len(dropped.body)
            self.start = dropped.position
        if self._first > self.capacity:  # compact now and then (amortised O(1) per item)
            del self._items[: self._first]
            del self._positions[: self._first]
            self._first = 0

    def take(self, position: int, selection: Selection, limit: int) -> Taken:
        """The items of `selection`'s session after `position`, at most `limit` (the type
        filter is the stream's: it must see its session's deletion whatever it sends)."""
        if position < self.start:
            return Taken([], position, lost=True)
        if position >= self.last:
            return Taken([], position)
        index = bisect.bisect_right(self._positions, position, lo=self._first)
        taken: list[FeedItem] = []
        for item in self._items[index:]:
            if selection.of_session(item):
                taken.append(item)
                if len(taken) == limit:
                    return Taken(taken, item.position)
        return Taken(taken, self.last)


@dataclass(frozen=True)
class Page:
    """A page read from the log for a stream behind the window: its session's items, and the
    position the stream is at after them."""

    items: list[FeedItem]
    position: int


class LiveFeed(ABC):
    """The process's feed of new events for its streams (one reader of the log, shared)."""

    @abstractmethod
    async def open(self) -> None:
        """A stream begins (the feed starts with the first)."""

    @abstractmethod
    def close(self) -> None:
        """A stream ended (the feed stops with the last)."""

    @abstractmethod
    async def head(self) -> int:
        """The position of the last event recorded (0: none)."""

    @abstractmethod
    def take(self, position: int, selection: Selection, limit: int) -> Taken:
        """What follows `position` in the window (see `FeedWindow.take`)."""

    @abstractmethod
    async def page(self, position: int, selection: Selection, limit: int) -> Page:
        """What follows `position` in the log, read from the database (a stream behind)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the feed whatever streams remain (the process stops)."""

    @abstractmethod
    async def wait_beyond(self, position: int, timeout: float) -> None:
        """Return once the window has gone past `position`, or after `timeout` seconds."""
