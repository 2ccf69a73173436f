"""Server-Sent Events of the log: what one open stream sends, and when it ends.

Each event is sent as the webhook would send it (``event:`` its type, ``data:`` the webhook
body) with ``id:`` its position in the log, so `Last-Event-ID` resumes right after it. A
stream takes new events from the process's feed (`projections.livefeed.LiveFeed`) and, while
it is behind the feed's window, reads the log itself a page at a time, as fast as its client
reads: the server holds no queue per stream. A stream that took from the window and fell
behind it (its client reads slower than events are recorded) is ended with an ``end`` event
whose id is its position, so that the client (a browser's `EventSource` by itself) resumes
from there.

A stream also ends, with an ``end`` event saying why, when its key is revoked or its session
deleted, when this process can no longer tell (its copy of the revocations is stale: it then
refuses keys too), and when the server stops. Its key is checked every `CHECK` seconds in
this process's copy of the revocations, which every revocation reaches before it answers
(whatever the projector is doing); a stream whose client does not read (its send waits) is
cut `GRACE` seconds later without the ``end`` event. Both together stay under a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from anyio import create_task_group
from litestar import Request
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send, TypeEncodersMap

from projections.livefeed import FeedItem, LiveFeed, Selection

log = logging.getLogger(__name__)

#: Seconds between two checks of a stream's key (and of the server stopping).
CHECK = 0.2
#: Seconds a stream that must end has to send its ``end`` event before it is cut.
GRACE = 0.5
#: Events taken from the window at a time, and notifications read per page of the log.
BATCH = 100
#: How long a stream of a deleted session waits for its `session.deleted` event before it ends
#: without it (the promise: a deleted session's streams end within 1 s).
DELETED_GRACE = 0.25
PAGE = 500
#: How long a browser waits before it reconnects (milliseconds).
RECONNECT_MS = 2000
EVENT_STREAM = "text/event-stream"
_encoder = msgspec.json.Encoder()


def event_frame(item: FeedItem) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.position, item.type.encode(), item.body)


def end_frame(reason: str, position: int) -> bytes:
    """The last event of a stream: why it ends, and where to resume (also its id)."""
    data = _encoder.encode({"reason": reason, "resumeAfter": position})
    return b"id: %d\nevent: end\nretry: %d\ndata: %s\n\n" % (position, RECONNECT_MS, data)


@dataclass
class StreamCounts:
    """The streams open in this process, per session (their cap), and whether it stops."""

    closing: asyncio.Event = field(default_factory=asyncio.Event)
    open: dict[str, int] = field(default_factory=dict)

    def of(self, session_id: str) -> int:
        return self.open.get(session_id, 0)

    def add(self, key: str, step: int) -> None:
        count = self.open.get(key, 0) + step
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)


@dataclass
class EventStream:
    """One open stream: what it sends, from where, and what ends it."""

    feed: LiveFeed
    selection: Selection
    position: int
    #: Why the stream must end now (its key revoked, …), or None while it may go on.
    guard: Callable[[], str | None]
    heartbeat: float
    counts: StreamCounts
    #: Whose streams it counts among (the session's, or the admin's global ones).
    owner: str

    def reason_to_end(self) -> str | None:
        if self.counts.closing.is_set():
            return "server-stopping"
        return self.guard()

    def _reason_now(self, deleted_since: float | None) -> tuple[str | None, float | None]:
        """Why the stream ends now (None: it goes on), and since when its session is known to
        be deleted. A stream of one session waits up to DELETED_GRACE seconds for the
        session's `session.deleted` event, on its way through the feed (the revocations say
        so first), which it sends and then ends at."""
        reason = self.reason_to_end()
        if reason != "session-deleted" or self.selection.session_id is None:
            return reason, deleted_since
        now = time.monotonic()
        since = now if deleted_since is None else deleted_since
        return (reason if now - since >= DELETED_GRACE else None), since

    async def frames(self) -> AsyncIterator[bytes]:
        await self.feed.open()
        self.counts.add(self.owner, 1)
        try:
            async for frame in self._frames():
                yield frame
        finally:
            self.counts.add(self.owner, -1)
            self.feed.close()

    async def _frames(self) -> AsyncIterator[bytes]:
        # Comment lines without the blank line that would end an event: clients that dispatch
        # an empty event on a blank line after an id (httpx-sse does) see nothing.
        yield b": connected\n"
        selection, position, attached = self.selection, self.position, False
        beat = time.monotonic() + self.heartbeat
        deleted_since: float | None = None
        while True:
            reason, deleted_since = self._reason_now(deleted_since)
            if reason is not None:
                yield end_frame(reason, position)
                return
            taken = self.feed.take(position, selection, BATCH)
            if not taken.lost:
                attached = True
                items, after = taken.items, taken.position
            elif attached:  # it fell behind the window: its client reads too slowly
                yield end_frame("too-slow", position)
                return
            else:  # behind the window from the start: read the log, at the client's pace
                page = await self.feed.page(position, selection, PAGE)
                items, after = page.items, page.position
            for item in items:
                if item.type in selection.types:
                    yield event_frame(item)
                if selection.session_id is not None and item.type == "session.deleted":
                    yield end_frame("session-deleted", item.position)
                    return
            if items:
                beat = time.monotonic() + self.heartbeat
            if after != position:
                position = after
                continue
            if time.monotonic() >= beat:
                yield b": heartbeat\n"
                beat = time.monotonic() + self.heartbeat
            await self.feed.wait_beyond(position, min(CHECK, max(0.0, beat - time.monotonic())))

    async def must_end(self) -> None:
        """Return `GRACE` seconds after the stream has to end (its ``end`` event was due):
        the stream is cut then, unless it ended meanwhile (this is cancelled then)."""
        while (reason := self.reason_to_end()) is None:
            await asyncio.sleep(CHECK)
        await asyncio.sleep(GRACE)
        log.info(
            "an event stream of %s is cut without its end event (%s): its client does not read",
            self.selection.session_id or "every session",
            reason,
        )


class _CutStreamingResponse(ASGIStreamingResponse):
    """A streaming response that is also cut when `cut` returns (see `EventStream.must_end`),
    even while its client does not read (a send that waits)."""

    def __init__(self, *, cut: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cut = cut

    async def send_body(self, send: Send, receive: Receive) -> None:
        async with create_task_group() as group:

            async def stream() -> None:
                await self._stream(send)
                group.cancel_scope.cancel()

            async def cut() -> None:
                await self._cut()
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(cut)
            await self._listen_for_disconnect(cancel_scope=group.cancel_scope, receive=receive)


class EventStreamResponse(Stream):
    """The answer of an event stream (``text/event-stream``, never cached or buffered)."""

    def __init__(self, stream: EventStream) -> None:
        super().__init__(
            stream.frames(),
            media_type=EVENT_STREAM,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._event_stream = stream

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        merged = {**headers, **self.headers} if headers is not None else self.headers
        all_cookies = list(self.cookies) + list(cookies or ())
        iterator = self.iterator
        assert not callable(iterator) or hasattr(iterator, "__aiter__")
        return _CutStreamingResponse(
            cut=self._event_stream.must_end,
            background=self.background or background,
            content_length=0,
            cookies=all_cookies,
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers=merged,
            is_head_response=is_head_response,
            iterator=iterator,
            media_type=EVENT_STREAM,
            status_code=self.status_code or status_code,
        )
