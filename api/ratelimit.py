"""Per-session rate limits, counted by the `limits` library in memory or in Redis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_after)
        return headers


class SessionRateLimiter:
    """A sliding-window budget of requests per minute for each session.

    `storage_uri` is ``memory://`` (one process) or ``redis://…`` (shared by every API
    process, so they spend one budget together). Both are counted with `limits`' asyncio
    strategies: its in-memory storage then expires counters on an asyncio task, where the
    threaded one would start a timer thread every few milliseconds under load.
    """

    def __init__(self, storage_uri: str = "memory://") -> None:
        options = {} if storage_uri.startswith("memory://") else {"implementation": "redispy"}
        self.storage = storage_from_string("async+" + storage_uri, **options)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, per_minute: int) -> RateLimitItemPerMinute:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def hit(self, session_id: str, per_minute: int) -> Decision:
        item = self._item(per_minute)
        allowed = await self.limiter.hit(item, "session", session_id)
        stats = await self.limiter.get_window_stats(item, "session", session_id)
        reset_after = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, per_minute, max(0, stats.remaining), reset_after)

    async def check(self) -> None:
        """Raise if the counting storage cannot be reached."""
        if not await self.storage.check():  # type: ignore[misc]
            raise ConnectionError("the rate-limit storage does not answer")
