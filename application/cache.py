"""A bounded cache of the sessions this process saved last, to skip loading them again.

A cached session may be stale (another process may have saved it since). That is safe for
a command that records events: the save carries the version it saw, so a stale copy fails
with a conflict and the command is retried on a fresh load. A command that would record
nothing, or that a cached copy refuses, is always decided again on a fresh load.

Sessions are checked out, not copied: `take` removes the session from the cache, so only one
command ever holds it, and only a successful save puts it back. A command that fails, or
that two commands want at once, simply loads the session afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar
from uuid import UUID

T = TypeVar("T")


class SessionCache(Generic[T]):
    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[UUID, T] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: UUID) -> T | None:
        """The cached object, now the caller's alone, or None."""
        with self._lock:
            return self._items.pop(key, None)

    def put(self, key: UUID, item: T) -> None:
        """Cache `item` (just saved): the caller must not change it any more."""
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def evict(self, key: UUID) -> None:
        with self._lock:
            self._items.pop(key, None)
