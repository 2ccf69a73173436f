"""A live stream never misses a change that lands while it renders or sends: it waits on the
change event it took before reading the views, not on whatever event is current afterwards.
And it ends by itself when the operator's sign-in expires."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from api.dashboard import live
from api.dashboard.live import _messages


class Changes:
    """ViewChanges' surface, with a change made by hand (what its watcher does)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()

    def change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def current(self) -> asyncio.Event:
        return self._changed

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


async def test_a_change_during_a_render_is_sent_at_once() -> None:
    changes = Changes()
    state = {"status": "connecting"}

    async def render() -> dict[str, str]:
        seen = dict(state)
        if seen["status"] == "connecting":  # the session connects while this render runs
            state["status"] = "connected"
            changes.change()
        return {"status": seen["status"]}

    stream = _messages(changes, render, lifetime=60)  # type: ignore[arg-type]
    started = time.monotonic()
    events: list[Any] = []
    async for message in stream:
        events.append(message)
        if message.event == "status" and message.data == "connected":
            break
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    assert time.monotonic() - started < live.HEARTBEAT / 2, "the change waited for the heartbeat"


async def test_a_stream_ends_when_the_sign_in_expires() -> None:
    changes = Changes()

    async def render() -> dict[str, str]:
        return {"status": "connected"}

    started = time.monotonic()
    messages = [m async for m in _messages(changes, render, lifetime=0.3)]  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
    assert any(m.event == "status" for m in messages)


class _SwallowingViews:
    """A copy of the views whose wait lets a cancel be lost: its future completes as the
    cancel lands (what `asyncio.wait_for` does in Python 3.11 when both meet)."""

    def __init__(self) -> None:
        self.position = 0
        self.waiting = asyncio.Event()
        self.future: asyncio.Future[None] | None = None

    async def wait(self, position: int, timeout: float) -> bool:
        self.future = asyncio.get_running_loop().create_future()
        self.waiting.set()
        await asyncio.wait_for(self.future, timeout)
        return True


async def test_the_watcher_ends_when_the_app_stops_even_if_a_cancel_is_lost() -> None:
    views = _SwallowingViews()
    ctx = type("Ctx", (), {"read_models": views, "view_position": lambda self: 0})()
    changes = live.ViewChanges(ctx)
    changes._task = asyncio.create_task(changes._watch())
    await views.waiting.wait()
    assert views.future is not None
    views.future.set_result(None)  # a refresh answers the wait just as the app stops
    await asyncio.wait_for(changes.close(), 30)
    assert changes._task.done()
