"""Expensive reads (a session as it was, uptime series, history pages, webhook replays) run
on a small pool of threads of their own, at most a few at once per session.

Their blocking work never runs on the threads that serve commands and the status path, and
one session's clients cannot fill the pool: beyond `per_session` reads in flight they are
answered 429 ``expensive-reads-spent`` with ``Retry-After``. A read counts as in flight until
its thread has finished the work, even if its client went away meanwhile. The pool uses the
process's existing database pool (no connections of its own); at most `threads` of its
connections are busy with expensive reads at once.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

from api.problems import ProblemError

T = TypeVar("T")
RETRY_AFTER = "1"
#: How long a thread holds the GIL before another may take it (Python's default: 5 ms). An
#: expensive read decoding events holds it for that long at a time, and the event loop that
#: answers status reads waits for it; at 1 ms the loop gets it back five times sooner.
SWITCH_INTERVAL = 0.001


def keep_the_loop_responsive() -> None:
    """Let the event loop take the GIL back from busy threads sooner (a server process)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


class ExpensiveReads:
    """A bounded pool for expensive reads, with a cap of reads in flight per session."""

    def __init__(self, threads: int = 2, per_session: int = 2) -> None:
        self.threads = threads
        self.per_session = per_session
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="expensive-read")
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_flight(self, session_id: str) -> int:
        with self._lock:
            return self._running.get(session_id, 0)

    async def run(self, session_id: str, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` on the pool for `session_id`; 429 if it has too many."""
        with self._lock:
            running = self._running.get(session_id, 0)
            if running < self.per_session:
                self._running[session_id] = running + 1
        if running >= self.per_session:
            self.refuse(session_id)
        try:
            future: Future[T] = self._executor.submit(function, *args)
        except BaseException:
            self._release(session_id)
            raise
        future.add_done_callback(lambda _: self._release(session_id))
        return await asyncio.wrap_future(future)

    def refuse(self, session_id: str) -> NoReturn:
        """Answer 429: the session has as many expensive reads in flight as it may."""
        raise ProblemError(
            429,
            "expensive-reads-spent",
            f"this session already runs {self.in_flight(session_id)} expensive reads (past "
            "states, uptime series, history pages, replays); at most "
            f"{self.per_session} at once (SESSIOND_EXPENSIVE_READS_PER_SESSION): try again "
            "shortly",
            {"Retry-After": RETRY_AFTER},
        )

    def _release(self, session_id: str) -> None:
        with self._lock:
            left = self._running.get(session_id, 0) - 1
            if left > 0:
                self._running[session_id] = left
            else:
                self._running.pop(session_id, None)

    def close(self) -> None:
        """Start no more reads; those queued are dropped, those running end by themselves."""
        self._executor.shutdown(wait=False, cancel_futures=True)
