"""Per-session rate limits and the per-address throttle of failed authentications, counted
by the `limits` library in memory (per process) or in Redis (shared by every API process)."""

from __future__ import annotations

import asyncio
import bisect
import functools
import ipaddress
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
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


#: Seconds at least between two sweeps of expired counters out of a process's memory.
SWEEP_INTERVAL = 1.0
#: Counters a sweep looks at between two turns of the event loop.
SWEEP_SLICE = 500


class PacedMemoryStorage(MemoryStorage):
    """`limits`' in-process storage, its sweep of expired counters paced.

    The library starts a sweep of every counter from each hit as soon as the last sweep has
    ended, on the event loop: under load that never stops, and each sweep costs in
    proportion to the sessions counted (in the 10,000-session storm, a sixth of the API
    process's event-loop time while 500 sessions were read). A counter reads as expired
    whatever the sweep does (`get` and the moving window compare times themselves): the
    sweep only frees memory, so here it runs at most every `sweep_interval` seconds and
    lets requests through every `SWEEP_SLICE` counters.
    """

    def __init__(self, sweep_interval: float = SWEEP_INTERVAL) -> None:
        super().__init__()
        self.sweep_interval = sweep_interval
        self.sweeps = 0
        self._swept_at = -math.inf

    # The library's own hook (its name mangled), replaced: `limits` is pinned.
    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802
        now = time.monotonic()
        running = self.timer is not None and not self.timer.done()
        if running or now - self._swept_at < self.sweep_interval:
            return
        self._swept_at = now
        self.timer = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        self.sweeps += 1
        now = time.time()
        try:
            for number, key in enumerate(list(self.events)):
                events = self.events.get(key)
                if events:  # newest first: keep those that have not expired
                    kept = events[: bisect.bisect_left(events, -now, key=lambda e: -e.expiry)]
                    self.events[key] = kept
                if not self.events.get(key):
                    self.events.pop(key, None)
                    self._forget_lock(key)
                if number % SWEEP_SLICE == SWEEP_SLICE - 1:
                    await asyncio.sleep(0)
            for number, key in enumerate(list(self.expirations)):
                if self.expirations.get(key, math.inf) <= now:
                    self.storage.pop(key, None)
                    self.expirations.pop(key, None)
                    self._forget_lock(key)
                if number % SWEEP_SLICE == SWEEP_SLICE - 1:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            return

    def _forget_lock(self, key: str) -> None:
        lock = self.locks.get(key)
        if lock is not None and not lock.locked():
            self.locks.pop(key, None)


def near_limit(remaining: int, per_minute: int) -> bool:
    """Whether a request let through left the session at most a tenth of its minute."""
    return remaining * 10 <= per_minute


class SessionRateLimiter:
    """A sliding-window budget of requests per minute for each session.

    `storage_uri` is ``memory://`` (one process) or ``redis://…`` (shared by every API
    process, so they spend one budget together). Both are counted with `limits`' asyncio
    strategies: its in-memory storage then expires counters on an asyncio task, where the
    threaded one would start a timer thread every few milliseconds under load; that task
    is paced (`PacedMemoryStorage`).
    """

    def __init__(self, storage_uri: str = "memory://") -> None:
        self.storage: Any
        if storage_uri.startswith("memory://"):
            self.storage = PacedMemoryStorage()
        else:
            self.storage = storage_from_string("async+" + storage_uri, implementation="redispy")
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self._items: dict[int, RateLimitItemPerMinute] = {}
        # Counted in this process, for `/metrics`: requests refused (429) and requests let
        # through with at most a tenth of the session's minute left (`near_limit`).
        self.limited = 0
        self.near_limit = 0

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
        remaining = max(0, stats.remaining)
        if not allowed:
            self.limited += 1
        elif near_limit(remaining, per_minute):
            self.near_limit += 1
        return Decision(allowed, per_minute, remaining, reset_after)

    async def check(self) -> None:
        """Raise if the counting storage cannot be reached."""
        if not await self.storage.check():
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
