"""A bounded cache of the sessions this process saved last, to skip loading them again.

A cached session may be stale (another process may have saved it since). That is safe for
a command that records events: the save carries the version it saw, so a stale copy fails
with a conflict and the command is retried on a fresh load. A command that would record
nothing, or that a cached copy refuses, is always decided again on a fresh load.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from typing import Generic, TypeVar
from uuid import UUID

T = TypeVar("T")


class SessionCache(Generic[T]):
    """Keeps each session pickled: a private copy per `get` for about half the cost of
    ``copy.deepcopy``, and nothing a caller does to its copy reaches the cache."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[UUID, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: UUID) -> T | None:
        """A private copy of the cached object (callers change it), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
        copied: T = pickle.loads(item)  # noqa: S301 - only our own pickles, made by `put`
        return copied

    def put(self, key: UUID, item: T) -> None:
        pickled = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._items[key] = pickled
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def evict(self, key: UUID) -> None:
        with self._lock:
            self._items.pop(key, None)
