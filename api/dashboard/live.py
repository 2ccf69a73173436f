"""Live updates over SSE: a stream re-renders its page's regions when the views change.

The views' in-process copy (`ReadModels`) is refreshed from PostgreSQL notifications; one
watcher per process waits on it and wakes every stream. A stream then renders its regions from
that copy and sends those that changed. An idle stream holds no database connection, sends a
comment every `HEARTBEAT` seconds (which also tells it when the client has gone), and ends
after `LIFETIME` seconds (the browser reconnects by itself) or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.context import ApiContext

log = logging.getLogger(__name__)
HEARTBEAT = 15.0
LIFETIME = 600.0
COALESCE = 0.25  # a burst of changes is sent as one update
RECONNECT_MS = 2000

#: What a stream sends: region id -> its HTML; None when the stream should end.
Render = Callable[[], Awaitable[dict[str, str] | None]]


class ViewChanges:
    """Wakes every live stream of this process when the views' copy moves on."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._watch(), name="view-changes")
        _on_stop_signal(loop, self._end_streams)

    def _end_streams(self) -> None:
        self.closing.set()
        self._changed.set()

    async def close(self) -> None:
        self._end_streams()
        task = self._task
        if task is None:
            return
        # Cancelled until it ends: a cancel that lands as a wait completes can be lost on
        # the way (asyncio.wait_for in Python 3.11 returns the result instead), and the app's
        # shutdown would wait for the watcher for ever.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def _watch(self) -> None:
        while not self.closing.is_set():
            seen = self.ctx.view_position()
            # One waiter for the whole process, however many streams are open.
            await self.ctx.read_models.wait(seen + 1, HEARTBEAT)
            if self.ctx.view_position() > seen:
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()

    def current(self) -> asyncio.Event:
        """The event the next change sets: take it before reading the views, then `wait` on
        it, so that a change made while the stream renders or sends wakes it at once."""
        return self._changed

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Return when `event` is set (a change, or the server closing), or after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel (3.11)
                await event.wait()


def on_stop_signal(callback: Callable[[], None]) -> None:
    """Call `callback` when the process is asked to stop (see `_on_stop_signal`)."""
    _on_stop_signal(asyncio.get_running_loop(), callback)


def _on_stop_signal(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call `callback` too when the process is asked to stop (SIGTERM, SIGINT).

    The HTTP server (granian) drains open connections before it shuts the app down, so a
    stream waiting for the app's shutdown would hold the server up for ever. The server's own
    handler still runs after ours; where the server installed none on this loop, the signals
    are left alone (the app's shutdown then ends the streams).
    """
    handlers: dict[int, asyncio.Handle] = getattr(loop, "_signal_handlers", {})
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = handlers.get(number)
        if previous is None:
            continue

        def handler(previous: asyncio.Handle = previous) -> None:
            callback()
            if not previous.cancelled():
                previous._run()  # the server's handler (asyncio keeps no public way to chain)

        try:
            loop.add_signal_handler(number, handler)
        except (RuntimeError, ValueError, NotImplementedError):
            return  # not the main thread (the test client's loop): no signals to hear here


async def _messages(
    changes: ViewChanges, render: Render, lifetime: float
) -> AsyncIterator[ServerSentEventMessage]:
    sent: dict[str, str] = {}
    ends_at = time.monotonic() + min(LIFETIME, lifetime)
    yield ServerSentEventMessage(comment="live", retry=RECONNECT_MS)
    while not changes.closing.is_set() and time.monotonic() < ends_at:
        woken = changes.current()
        regions = await render()
        if regions is None:
            yield ServerSentEventMessage(event="end", data="")
            return
        changed = {k: v for k, v in regions.items() if sent.get(k) != v}
        for region, html in changed.items():
            yield ServerSentEventMessage(event=region, data=html)
        sent.update(changed)
        if not changed:
            yield ServerSentEventMessage(comment="idle")
        await changes.wait(woken, min(HEARTBEAT, max(0.0, ends_at - time.monotonic())))
        await asyncio.sleep(COALESCE)


def stream(changes: ViewChanges, render: Render, lifetime: float = LIFETIME) -> ServerSentEvent:
    """The SSE answer of a live page; Litestar ends it when the client goes away, and it ends
    itself after `lifetime` seconds (at the latest when the operator's sign-in expires: the
    browser's reconnect then meets the sign-in check)."""
    return ServerSentEvent(
        _messages(changes, render, lifetime), headers={"Cache-Control": "no-store"}
    )
