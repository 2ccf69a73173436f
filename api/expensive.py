"""Expensive reads (a session as it was, uptime series, history pages, webhook replays) run
on a small pool of their own, at most a few at once per session.

In a server process the pool is made of processes (`ReaderProcesses`): the reads' decoding
and encoding never hold the API process's GIL, so the event loop that answers status reads
and the threads that keep its views current never wait behind them. Each reader process
reads with its own objects (built once by the composition root's recipe, one database
connection each) and answers the response body already encoded: all the API process does
with a read is pass bytes on. In-process apps (tests) run the same reads on threads with
the API's own objects.

One session's clients cannot fill the pool: beyond `per_session` reads in flight they are
answered 429 ``expensive-reads-spent`` with ``Retry-After``, which `api.fastpath` answers
before the route's parameters and body once the key is checked. A read counts as in flight
until its work has finished, even if its client went away meanwhile.

Each such 429 is answered after `refusal_pause` seconds (SESSIOND_EXPENSIVE_REFUSAL_PAUSE),
during which the request holds nothing but its connection (a timer of the event loop): a
tenant that sends its expensive reads again without waiting, on as many connections as it
likes, gets at most (its connections / the pause) refusals a second out of the API process,
instead of as many as the event loop can answer, and the status reads of the others do not
queue behind them.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NoReturn, TypeVar

from api.problems import ProblemError

T = TypeVar("T")
RETRY_AFTER = "1"
#: Webhook endpoints whose tenant (whose reads a replay counts as) a process keeps in mind,
#: the most recently replayed ones, so that it can refuse their replays beyond the cap early.
TENANTS_KEPT = 10_000
#: How much lower a reader process's CPU priority is than its API process's (`nice`; the
#: default of SESSIOND_READER_NICENESS).
READER_NICENESS = 10
#: How often a reader process checks that its API process is still there (seconds).
PARENT_CHECK = 0.5
#: How long a thread holds the GIL before another may take it (Python's default: 5 ms). The
#: event loop that answers status reads waits for it behind busy threads (the views' refresh,
#: commands); at 1 ms it gets it back five times sooner.
SWITCH_INTERVAL = 0.001

#: What the reads of a reader process read with: built at its first read (not when the
#: process starts, so that an idle server's readers hold no database connection).
_readers: Any = None
_build: Callable[[], Any] | None = None


def keep_the_loop_responsive() -> None:
    """Let the event loop take the GIL back from busy threads sooner (a server process)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def _start_reader(build: Callable[[], Any], parent_pid: int, niceness: int) -> None:
    global _build  # noqa: PLW0603 - one per reader process, set once at its start
    # Behind the API process for the CPU: a core both want goes to the status reads first.
    os.nice(niceness)
    threading.Thread(target=_exit_with, args=(parent_pid,), name="parent", daemon=True).start()
    _build = build  # its modules are imported by now (unpickling it imported them)


def _own_readers() -> Any:
    global _readers  # noqa: PLW0603 - one per reader process, built once
    if _readers is None:
        assert _build is not None, "not a reader process"
        _readers = _build()
    return _readers


def _exit_with(parent_pid: int) -> None:
    """End this reader process as soon as its API process is gone, however it went."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK)
    os._exit(0)


def _ready() -> None:
    """Nothing: submitted, it starts a reader process."""


def _read_in_process(task: Callable[..., T], *args: Any) -> T:
    return task(_own_readers(), *args)


class ReaderProcesses:
    """A pool of `processes` reader processes, each reading with what `build()` returns.

    `build` must be picklable (a module-level function, or a picklable callable object): it
    runs in each new process. Processes are started with the ``spawn`` method (the API
    process has threads) by `start` or when first needed, and replaced if one dies (its read
    answers 503). Each runs `niceness` below its API process's CPU priority (nice), so that a
    core both want goes to the status reads first. They end with the API process: when it
    closes the pool or exits (they are stopped, whatever they were doing), or when it is
    killed (they notice within `PARENT_CHECK`).
    """

    def __init__(
        self, processes: int, build: Callable[[], Any], niceness: int = READER_NICENESS
    ) -> None:
        self.processes = processes
        self.build = build
        self.niceness = niceness
        self._lock = threading.Lock()
        self._executor = self._new()
        # Before multiprocessing's own exit handler, which would wait for them for ever.
        atexit.register(self.close)

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_reader,
            initargs=(self.build, os.getpid(), self.niceness),
        )

    def start(self) -> None:
        """Start every reader process now (in the background), not at the first reads."""
        executor = self.executor
        for _ in range(self.processes):
            executor.submit(_ready)

    def replace(self, broken: ProcessPoolExecutor) -> None:
        """Start a new pool in place of `broken` (once, whoever notices first)."""
        with self._lock:
            if self._executor is not broken:
                return
            self._executor = self._new()
        broken.shutdown(wait=False, cancel_futures=True)

    @property
    def executor(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._executor

    def close(self) -> None:
        """Stop the reader processes now, reads in flight included (their answers are lost)."""
        with self._lock:
            executor = self._executor
        # The executor's processes (it forgets them on shutdown), which it would only stop
        # once each had read its request to.
        try:
            processes = list((getattr(executor, "_processes", None) or {}).values())
        except RuntimeError:  # changed meanwhile (a process started): they end with us
            processes = []
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)


class ExpensiveReads:
    """A bounded pool for expensive reads, with a cap of reads in flight per session.

    `run(session_id, task, local, *args)` runs ``task(readers, *args)``: on the threads
    with `local` (the caller's own objects) as `readers`, or in a reader process with that
    process's own (then `task` and `args` must be picklable, and so must its result).
    """

    def __init__(
        self,
        threads: int = 2,
        per_session: int = 2,
        processes: ReaderProcesses | None = None,
        refusal_pause: float = 0.0,
    ) -> None:
        self.threads = processes.processes if processes is not None else threads
        self.per_session = per_session
        self.refusal_pause = refusal_pause
        self.processes = processes
        self._executor: Executor | None = (
            None
            if processes is not None
            else ThreadPoolExecutor(threads, thread_name_prefix="expensive-read")
        )
        self._running: dict[str, int] = {}
        self._tenants: dict[str, str] = {}
        self._lock = threading.Lock()

    def in_flight(self, session_id: str) -> int:
        with self._lock:
            return self._running.get(session_id, 0)

    def start(self) -> None:
        """Start the reader processes, if any (in the background)."""
        if self.processes is not None:
            self.processes.start()

    def spent(self, session_id: str) -> bool:
        """Whether the session has as many reads in flight as it may (a new one is 429)."""
        return self.in_flight(session_id) >= self.per_session

    async def run(self, session_id: str, task: Callable[..., T], local: Any, *args: Any) -> T:
        """Run `task` on the pool for `session_id`; 429 if it has too many in flight."""
        with self._lock:
            running = self._running.get(session_id, 0)
            if running < self.per_session:
                self._running[session_id] = running + 1
        if running >= self.per_session:
            await self.refuse(session_id)
        try:
            future = self._submit(task, local, *args)
        except BaseException:
            self._release(session_id)
            raise
        future.add_done_callback(lambda _: self._release(session_id))
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            raise self._unavailable() from None

    def _submit(self, task: Callable[..., T], local: Any, *args: Any) -> Future[T]:
        if self.processes is None:
            assert self._executor is not None
            return self._executor.submit(task, local, *args)
        executor = self.processes.executor
        try:
            future = executor.submit(_read_in_process, task, *args)
        except BrokenProcessPool:
            self.processes.replace(executor)
            raise self._unavailable() from None

        def replace_if_broken(done: Future[T]) -> None:
            if not done.cancelled() and isinstance(done.exception(), BrokenProcessPool):
                assert self.processes is not None
                self.processes.replace(executor)

        future.add_done_callback(replace_if_broken)
        return future

    @staticmethod
    def _unavailable() -> ProblemError:
        return ProblemError(
            503,
            "reader-unavailable",
            "the process that ran this read ended; it has been replaced: try again",
            {"Retry-After": RETRY_AFTER},
        )

    async def refuse(self, session_id: str) -> NoReturn:
        """Answer 429, after the refusal pause: the session has as many expensive reads in
        flight as it may."""
        if self.refusal_pause > 0:
            await asyncio.sleep(self.refusal_pause)
        raise ProblemError(
            429,
            "expensive-reads-spent",
            f"this session already runs {self.in_flight(session_id)} expensive reads (past "
            "states, uptime series, history pages, replays); at most "
            f"{self.per_session} at once (SESSIOND_EXPENSIVE_READS_PER_SESSION): try again "
            "shortly",
            {"Retry-After": RETRY_AFTER},
        )

    def remember_tenant(self, webhook_id: str, tenant: str) -> None:
        """Note whose reads the replays of `webhook_id` count as (`tenant_of`)."""
        with self._lock:
            self._tenants.pop(webhook_id, None)
            self._tenants[webhook_id] = tenant
            if len(self._tenants) > TENANTS_KEPT:
                del self._tenants[next(iter(self._tenants))]

    def forget_tenant(self, webhook_id: str) -> None:
        with self._lock:
            self._tenants.pop(webhook_id, None)

    def tenant_of(self, webhook_id: str) -> str | None:
        """Whose reads a replay of `webhook_id` counted as when this process last ran one
        (None: none ran here lately). An endpoint never changes tenant."""
        with self._lock:
            return self._tenants.get(webhook_id)

    def _release(self, session_id: str) -> None:
        with self._lock:
            left = self._running.get(session_id, 0) - 1
            if left > 0:
                self._running[session_id] = left
            else:
                self._running.pop(session_id, None)

    def close(self) -> None:
        """Start no more reads; those queued are dropped, those running end by themselves."""
        if self.processes is not None:
            self.processes.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class LocalReads:
    """The expensive reads of this process: each runs on `pool` for its session, with
    `readers` (this process's objects) when it runs on the pool's threads."""

    def __init__(self, pool: ExpensiveReads, readers: Any) -> None:
        self.pool = pool
        self.readers = readers

    async def run(self, session_id: str, task: Callable[..., T], *args: Any) -> T:
        """Run ``task(readers, *args)`` for `session_id`; 429 if it has too many in flight."""
        return await self.pool.run(session_id, task, self.readers, *args)
