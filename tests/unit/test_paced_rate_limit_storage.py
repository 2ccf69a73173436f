"""The in-process rate-limit counters are swept out of memory at a pace, not from every
hit: the sweep costs in proportion to the sessions counted, and ran on the event loop
without pause under load. Counting and limiting are unchanged."""

from __future__ import annotations

import asyncio

from api.ratelimit import PacedMemoryStorage, SessionRateLimiter


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_many_hits_start_one_sweep_per_interval() -> None:
    storage = PacedMemoryStorage(sweep_interval=60)
    for number in range(2_000):
        await storage.incr(f"session-{number % 300}", expiry=60)
        if number % 100 == 0:
            await settle()
    await settle()
    assert storage.sweeps == 1  # the library would have swept again after each sweep ended
    assert len(storage.storage) == 300


async def test_expired_counters_read_as_zero_at_once_and_leave_memory_at_the_next_sweep() -> None:
    storage = PacedMemoryStorage(sweep_interval=0.2)
    for number in range(1_200):  # more than one slice of the sweep
        await storage.incr(f"session-{number}", expiry=0.05)
    await asyncio.sleep(0.1)
    assert await storage.get("session-7") == 0  # expired, whatever the sweep has done
    await asyncio.sleep(0.2)
    await storage.incr("another", expiry=60)  # a hit after the interval starts a sweep
    await asyncio.sleep(0.05)
    assert storage.sweeps == 2
    assert set(storage.storage) == {"another"}
    assert set(storage.expirations) == {"another"}


async def test_a_session_is_limited_as_before() -> None:
    limiter = SessionRateLimiter("memory://")
    decisions = [await limiter.hit("sess_a", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert (await limiter.hit("sess_b", 3)).allowed  # another session has its own budget
