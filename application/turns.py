"""One command at a time per session within a process.

Commands on one session conflict on its version: run side by side in one process, all but one
of them would load, change and try to save for nothing, and with enough of them some would run
out of tries (a tenant's burst of commands on its own session starving the link's reports).
Taking turns per session costs nothing more: a batch of the group committer holds one save
per session anyway. Commands of other processes still conflict now and then, and are retried.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class Turns:
    """A re-entrant lock per key, held only while someone uses it (no growth with the keys)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[Hashable, tuple[threading.RLock, int]] = {}

    @contextmanager
    def turn(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._held.get(key, (None, 0))
            if lock is None:
                lock = threading.RLock()
            self._held[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                _, users = self._held[key]
                if users == 1:
                    del self._held[key]
                else:
                    self._held[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are in use or waited for now."""
        with self._guard:
            return len(self._held)
