"""Per-session rate limits and the per-address throttle of failed authentications, counted
by the `limits` library in memory (per process) or in Redis (shared by every API process)."""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class FailureThrottle:
    """At most `per_minute` failed authentications per client address in any minute (a
    moving window, in the rate limits' storage); beyond it the address is locked out until
    the oldest failure in the window is a minute old."""

    def __init__(self, limiter: SessionRateLimiter, per_minute: int) -> None:
        self.limiter = MovingWindowRateLimiter(limiter.storage)
        self.item = RateLimitItemPerMinute(per_minute)
        self.per_minute = per_minute

    async def locked_out(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it is not locked out."""
        if await self.limiter.test(self.item, "auth-failures", address):
            return None
        stats = await self.limiter.get_window_stats(self.item, "auth-failures", address)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def failed(self, address: str) -> None:
        """Count one failed authentication of `address`."""
        await self.limiter.hit(self.item, "auth-failures", address)


def client_address(scope: Any, trusted_proxies: Sequence[Network]) -> str:
    """Who sent the request, as the failure throttle counts it.

    The connection's peer, unless the peer is one of `trusted_proxies`: then the rightmost
    address of ``X-Forwarded-For`` that is not a trusted proxy (every proxy appends the
    address it got the request from, so what a client wrote itself is further left, and is
    never believed). Without trusted proxies the header is ignored. An IPv6 client counts as
    its /64 (one host usually holds a whole /64, and could otherwise rotate through it).
    """
    client = scope.get("client")
    if not client:
        return "unknown"
    peer, key = _peer(str(client[0]))
    if peer is None or not trusted_proxies:
        return key
    if _trusted(peer, trusted_proxies):
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"x-forwarded-for"
        ]
        for hop in reversed([hop for line in forwarded for hop in line.split(",")]):
            address = _parse(hop)
            if address is None:
                break  # not an address: the proxies' chain is not readable past this point
            if not _trusted(address, trusted_proxies):
                return _key(address)
            peer = address
    return _key(peer)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def _peer(text: str) -> tuple[Address | None, str]:
    """A peer address parsed, and its key (parsed once per address: this runs per request)."""
    address = _parse(text)
    return address, text if address is None else _key(address)


def _parse(text: str) -> Address | None:
    """An address as a proxy writes it: ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:443``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted_proxies: Sequence[Network]) -> bool:
    return any(address in network for network in trusted_proxies)


def _key(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
