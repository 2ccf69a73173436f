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
