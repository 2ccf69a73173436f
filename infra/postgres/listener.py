"""The one session-bound connection of a process: every LISTEN, and the advisory locks it holds.

PostgreSQL's connections are counted across every process, so a process keeps a fixed few:
one pool for its queries (which may go through PgBouncer in transaction mode) and this one
direct connection for what needs a session of its own — ``LISTEN`` for every channel anyone
in the process listens to, and the advisory locks held across transactions (the projections'
leadership, `infra.runtime.supervisor`). A locked session must be the one that unlocks, and a
notification reaches only the session that listens: neither survives a pooler.

One thread owns the connection. It waits on the socket and on a wake-up pipe together, hands
each notification to the callbacks of its channel (they must only set a flag), and runs the
short statements others ask for (`run`) between two waits. Each (re)connection is numbered
(`epoch`): a lock taken at one epoch is gone once the epoch changed (the session that held it
ended). After each (re)connection, every channel's callbacks are called once, so that nothing
sent before the LISTEN is missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import psycopg
from psycopg import Notify
from psycopg.sql import SQL, Identifier

from infra.postgres.connect import connect, unreachable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often an idle listener checks its connection (a dead peer is seen by then at the latest).
CHECK_INTERVAL = 1.0
#: The pause before connecting again after a failure.
RECONNECT_PAUSE = 0.5


class ListenerDown(psycopg.OperationalError):
    """The listener has no connection right now (it is connecting again, or stopped)."""


class ProcessListener:
    """The process's direct connection (see the module's docstring)."""

    def __init__(
        self,
        database_url: str,
        application_name: str,
        *,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.database_url = database_url
        self.application_name = application_name
        self.check_interval = check_interval
        self.epoch = 0  # bumped at each connection; 0: never connected
        self.connected = threading.Event()
        self._callbacks: dict[str, list[Callable[[Notify | None], None]]] = defaultdict(list)
        self._listening: set[str] = set()
        self._on_lost: list[Callable[[], None]] = []
        self._tasks: list[tuple[Callable[[psycopg.Connection[Any]], Any], Future[Any]]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_closed = False
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)

    # -- what others ask for ----------------------------------------------------------------

    def listen(self, channel: str, callback: Callable[[Notify | None], None]) -> None:
        """Call `callback` (on the listener's thread: it must be quick) with each notification
        on `channel`, and with None after each (re)connection."""
        with self._lock:
            self._callbacks[channel].append(callback)
        self._wake()

    def unlisten(self, channel: str, callback: Callable[[Notify | None], None]) -> None:
        """Stop calling `callback` (the channel stays listened to: it costs nothing)."""
        with self._lock:
            if callback in self._callbacks.get(channel, ()):
                self._callbacks[channel].remove(callback)

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the connection is lost (its locks are gone)."""
        with self._lock:
            self._on_lost.append(callback)

    def run(self, statement: Callable[[psycopg.Connection[Any]], T], timeout: float = 5.0) -> T:
        """Run `statement(connection)` on the listener's thread and return what it returns.

        Raises `ListenerDown` when there is no connection, and whatever the statement
        raised (a lost connection too)."""
        if not self.connected.is_set():
            raise ListenerDown("the listener is not connected")
        future: Future[T] = Future()
        with self._lock:
            self._tasks.append((statement, future))
        self._wake()
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ListenerDown("the listener did not answer in time") from None

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and close the connection (its locks go with it), in `timeout` at most."""
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self._pipe_closed:
            self._pipe_closed = True  # once: the numbers may be another file's afterwards
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _wake(self) -> None:
        if self._pipe_closed:
            return
        # A full pipe wakes the thread anyway; a closed one belongs to a stopped listener.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = connect(
                    self.database_url,
                    autocommit=True,
                    application_name=self.application_name,
                )
                with self._lock:
                    self._listening = set()
                self._serve(conn)
            except Exception as error:
                if not self._stopping.is_set():
                    log.warning(
                        "the listener lost the database (%s); connecting again",
                        error,
                        exc_info=not unreachable(error),
                    )
            finally:
                self._lost()
                if conn is not None:
                    conn.close()
            self._stopping.wait(RECONNECT_PAUSE)

    def _lost(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        with self._lock:
            tasks, self._tasks = self._tasks, []
            on_lost = list(self._on_lost)
        for _, future in tasks:
            if future.set_running_or_notify_cancel():
                future.set_exception(ListenerDown("the listener lost its connection"))
        if was:
            for callback in on_lost:
                callback()

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        self._listen_to_new(conn)
        self.epoch += 1
        self.connected.set()
        last_check = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                wait = max(0.0, last_check + self.check_interval - time.monotonic())
                selector.select(wait)
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                self._listen_to_new(conn)
                self._run_tasks(conn)
                if time.monotonic() - last_check >= self.check_interval:
                    conn.execute("SELECT 1")  # a dead connection raises here
                    last_check = time.monotonic()
                for notify in conn.notifies(timeout=0):  # the socket's and those read meanwhile
                    self._dispatch(notify)

    def _listen_to_new(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            channels = set(self._callbacks) - self._listening
        for channel in sorted(channels):
            conn.execute(SQL("LISTEN {0}").format(Identifier(channel)))
            with self._lock:
                self._listening.add(channel)
                callbacks = list(self._callbacks[channel])
            for callback in callbacks:
                callback(None)

    def _run_tasks(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            tasks, self._tasks = self._tasks, []
        for index, (statement, future) in enumerate(tasks):
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(statement(conn))
            except BaseException as error:
                future.set_exception(error)
                if conn.closed or conn.broken:
                    with self._lock:  # the rest fail with the connection
                        self._tasks = tasks[index + 1 :] + self._tasks
                    raise

    def _dispatch(self, notify: Notify) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(notify.channel, ()))
        for callback in callbacks:
            try:
                callback(notify)
            except Exception:
                log.exception("a listener callback failed")
