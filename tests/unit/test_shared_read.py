"""Writes that wait for every API process share each read of the processes' rows, and each
gets the answer of a read that began after it asked (never an older one)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from infra.postgres.viewcache import SharedRead


class GatedRead:
    """A blocking read that counts its calls and, while `gate` is shut, waits in the middle."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.gate = threading.Event()
        self.error: Exception | None = None

    def __call__(self) -> int:
        self.calls += 1
        number = self.calls
        self.started.set()
        assert self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return number


async def wait_started(read: GatedRead) -> None:
    assert await asyncio.to_thread(read.started.wait, 10)
    read.started.clear()


async def test_callers_that_ask_together_share_one_read() -> None:
    read = GatedRead()
    read.gate.set()
    shared = SharedRead(read)
    results = await asyncio.gather(*(shared.get() for _ in range(20)))
    assert results == [1] * 20
    assert read.calls == 1


async def test_a_caller_that_asks_during_a_read_gets_the_next_one() -> None:
    read = GatedRead()
    shared = SharedRead(read)
    first = asyncio.create_task(shared.get())
    await wait_started(read)  # the first read has begun: what it returns may predate...
    later = [asyncio.create_task(shared.get()) for _ in range(5)]  # ...these callers
    await asyncio.sleep(0.01)
    read.gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [2] * 5  # one read more, begun after they asked
    assert read.calls == 2


async def test_an_error_reaches_every_caller_of_that_read_and_the_next_read_is_new() -> None:
    read = GatedRead()
    read.error = RuntimeError("the database is away")
    read.gate.set()
    shared = SharedRead(read)
    outcomes = await asyncio.gather(shared.get(), shared.get(), return_exceptions=True)
    assert [str(o) for o in outcomes] == ["the database is away"] * 2
    read.error = None
    assert await shared.get() == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_read_of_the_others() -> None:
    read = GatedRead()
    shared = SharedRead(read)
    leaving = asyncio.create_task(shared.get())
    staying = asyncio.create_task(shared.get())
    await wait_started(read)
    leaving.cancel()
    read.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 1
