"""The pool of expensive reads: a cap of reads in flight per session, released only when the
work has ended (not when its client went away)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.expensive import ExpensiveReads
from api.problems import ProblemError


async def test_a_session_beyond_its_cap_is_refused_429_and_others_are_not() -> None:
    reads = ExpensiveReads(threads=2, per_session=1)
    release = threading.Event()
    hanging = asyncio.create_task(reads.run("noisy", lambda _: release.wait(), None))
    while reads.in_flight("noisy") == 0:
        await asyncio.sleep(0)
    with pytest.raises(ProblemError) as refused:
        await reads.run("noisy", lambda _: "never", None)
    assert refused.value.status == 429
    assert refused.value.code == "expensive-reads-spent"
    assert refused.value.headers == {"Retry-After": "1"}
    # Check: another session is served meanwhile, on the pool's other thread.
    assert await reads.run("quiet", lambda _: "served", None) == "served"
    release.set()
    assert await hanging is True
    assert await reads.run("noisy", lambda _: "again", None) == "again"
    reads.close()


async def test_a_read_whose_client_went_away_counts_until_its_work_ends() -> None:
    reads = ExpensiveReads(threads=1, per_session=1)
    release, ended = threading.Event(), threading.Event()

    def work() -> None:
        release.wait()
        ended.set()

    abandoned = asyncio.create_task(reads.run("noisy", lambda _: work(), None))
    while reads.in_flight("noisy") == 0:
        await asyncio.sleep(0)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert reads.in_flight("noisy") == 1  # the thread still works for it
    release.set()
    await asyncio.to_thread(ended.wait)
    while reads.in_flight("noisy"):
        await asyncio.sleep(0)
    assert await reads.run("noisy", lambda _: 1, None) == 1
    reads.close()


async def test_a_refusal_is_answered_after_the_pause_and_holds_no_slot_meanwhile() -> None:
    pause = 0.2
    reads = ExpensiveReads(threads=2, per_session=1, refusal_pause=pause)
    release = threading.Event()
    hanging = asyncio.create_task(reads.run("noisy", lambda _: release.wait(), None))
    while reads.in_flight("noisy") == 0:
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    refused = [asyncio.create_task(reads.run("noisy", lambda _: "never", None)) for _ in range(20)]
    # Check: while the refusals wait, another session is served (they hold no slot).
    assert await reads.run("quiet", lambda _: "served", None) == "served"
    assert reads.in_flight("noisy") == 1
    for task in refused:
        with pytest.raises(ProblemError) as error:
            await task
        assert error.value.status == 429
    # Check: none was answered before the pause (a timer never fires early by more than the
    # clock's resolution).
    assert loop.time() - began >= pause - 0.01
    release.set()
    assert await hanging is True
    reads.close()
