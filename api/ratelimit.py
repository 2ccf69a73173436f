"""Per-session rate limits, counted by the `limits` library in memory or in Redis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter


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

    `storage_uri` is ``memory://`` (one process; counted synchronously, which is cheaper on
    the hot path and never blocks) or ``redis://…`` (shared by every API process, so they
    spend one budget together; counted with the asyncio client).
    """

    def __init__(self, storage_uri: str = "memory://") -> None:
        self.shared = not storage_uri.startswith("memory://")
        if self.shared:
            self.async_storage = storage_from_string(
                "async+" + storage_uri, implementation="redispy"
            )
            self.async_limiter = AsyncSlidingWindow(self.async_storage)
        else:
            self.storage = storage_from_string(storage_uri)
            self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[int, RateLimitItemPerMinute] = {}

    def _item(self, per_minute: int) -> RateLimitItemPerMinute:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def hit(self, session_id: str, per_minute: int) -> Decision:
        item = self._item(per_minute)
        if self.shared:
            allowed = await self.async_limiter.hit(item, "session", session_id)
            stats = await self.async_limiter.get_window_stats(item, "session", session_id)
        else:
            allowed = self.limiter.hit(item, "session", session_id)
            stats = self.limiter.get_window_stats(item, "session", session_id)
        reset_after = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, per_minute, max(0, stats.remaining), reset_after)

    async def check(self) -> None:
        """Raise if the counting storage cannot be reached."""
        ok = await self.async_storage.check() if self.shared else self.storage.check()  # type: ignore[misc]
        if not ok:
            raise ConnectionError("the rate-limit storage does not answer")
