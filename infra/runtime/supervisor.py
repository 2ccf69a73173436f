"""Runs one projection under a supervisor: elected by an advisory lock, restarted when it fails.

Exactly one process runs each projection: the one holding ``pg_advisory_lock(hashtext(name))``
on a dedicated connection. The others stand by and take over when that connection goes away.
The leader runs the projection's active generation (`infra/postgres/generations.py`), read
when it is elected, and hands the lock over to a rebuild that waits for it
(`infra/runtime/rebuild.py`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from eventsourcing.projection import ApplicationSubscription, Projection, ProjectionRunner
from eventsourcing.utils import EnvType

from application.sessions import SessionsApplication
from infra.postgres.connect import log_failure
from infra.postgres.generations import (
    GENERATIONS_CHANNEL,
    active_generation,
    projection_for,
    tracking_table,
)
from infra.postgres.listener import ListenerDown, ProcessListener

log = logging.getLogger(__name__)


#: At most this many events share one view transaction.
BATCH_LIMIT = 500
#: Whether a session waits (`pg_advisory_lock`, blocking) for the lock this one holds. Leaders
#: and standbys only ever *try* the lock, so a waiter is a rebuild asking for a handover.
WAITER_FOR_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND NOT l.granted "
    "AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%(key)s)::bigint)"
)


def lock_key(name: str) -> str:
    """The text whose hash is the advisory lock of projection `name`."""
    return "sessiond:" + name


class BatchingProjectionRunner(ProjectionRunner[SessionsApplication, Any]):
    """eventsourcing's runner, but the events already read from the log (a page, up to
    `BATCH_LIMIT`) are applied in one transaction of the view, with each event's own
    tracking record: one commit instead of one per event when events come in bursts.
    Exactly-once holds as before: rows and tracking records commit (or not) together."""

    @staticmethod
    def _process_events_loop(
        subscription: ApplicationSubscription[Any],
        projection: Any,  # a Projection (the base class also allows event-sourced ones)
        is_stopping: threading.Event,
        runner: weakref.ReferenceType[ProjectionRunner[Any, Any]],
    ) -> None:
        view = projection.view
        source = getattr(subscription, "subscription", None)
        batching = hasattr(view, "batch") and hasattr(source, "buffered")
        try:
            for domain_event, tracking in subscription:
                if not batching:
                    projection.process_event(domain_event, tracking)
                    continue
                with view.batch():
                    projection.process_event(domain_event, tracking)
                    count = 1
                    while count < BATCH_LIMIT and source.buffered():  # type: ignore[union-attr]
                        try:
                            item = next(subscription)
                        except StopIteration:  # stopped: commit what was applied
                            break
                        projection.process_event(*item)
                        count += 1
        except BaseException as error:
            _runner = runner()
            if _runner is not None:
                _runner._thread_error = error
        finally:
            is_stopping.set()


class SharedRunner(BatchingProjectionRunner):
    """A `BatchingProjectionRunner` on the process's application and pool: it builds no
    application and no pool of its own (eventsourcing's runner builds one of each), and
    leaves the application open when it stops."""

    def __init__(self, *, app: SessionsApplication, projection_class: type[Any], view: Any) -> None:
        self.view = view
        self.projection = projection_class(view=view)
        self._projection = self.projection
        self._is_interrupted = threading.Event()
        self._has_called_stop = False
        self._tracking_recorder = view
        self.app = app
        self.app_name = app.name
        self._subscription = ApplicationSubscription(
            app=app, gt=view.max_tracking_id(app.name), topics=self.projection.topics
        )
        self._thread_error: BaseException | None = None
        self._stop_thread = threading.Thread(
            target=self._stop_subscription_when_stopping,
            kwargs={"subscription": self._subscription, "is_stopping": self._is_interrupted},
        )
        self._stop_thread.start()
        self._processing_thread = threading.Thread(
            target=self._process_events_loop,
            kwargs={
                "subscription": self._subscription,
                "projection": self._projection,
                "is_stopping": self._is_interrupted,
                "runner": weakref.ref(self),
            },
        )
        self._processing_thread.start()

    def __exit__(self, *args: object) -> None:
        self.stop()
        self._stop_thread.join()
        self._subscription.__exit__(*args)
        self._processing_thread.join()
        if self._thread_error:
            error, self._thread_error = self._thread_error, None
            raise error


class LockLost(psycopg.OperationalError):
    """The listener's connection, and with it the projection's lock, is gone."""


class ProjectionSupervisor:
    """Keeps a `ProjectionRunner` going for as long as this process holds the projection's lock.

    The lock is held on the process's listener (`infra.postgres.listener`), shared by every
    supervisor of the process; the runner runs on the process's application (`app`), so
    that a projection costs no connection of its own. Without them (tests), the supervisor
    has a listener of its own and the runner builds its application from `env`."""

    def __init__(
        self,
        projection_class: type[Projection[Any]],
        view_class: type[Any],
        env: Mapping[str, str],
        database_url: str,
        *,
        check_interval: float = 1.0,
        restart_delay: float = 1.0,
        on_elected: Callable[[], None] | None = None,
        on_demoted: Callable[[], None] | None = None,
        app: SessionsApplication | None = None,
        listener: ProcessListener | None = None,
    ) -> None:
        self.projection_class = projection_class
        self.view_class = view_class
        self.env: EnvType = dict(env)
        self.database_url = database_url
        self.check_interval = check_interval
        self.restart_delay = restart_delay
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.app = app
        self._own_listener = listener is None
        self.listener = listener or ProcessListener(database_url, "sessiond-supervisor")
        self.restarts = 0
        self.is_leader = threading.Event()
        self._stopping = threading.Event()
        self._news = threading.Event()  # a switch or a rebuild announced, or the lock lost
        self._held_at: int | None = None  # the listener's epoch the lock was taken at
        self.listener.listen(GENERATIONS_CHANNEL, lambda _: self._news.set())
        self.listener.on_lost(self._news.set)
        self._thread = threading.Thread(
            target=self._run, name=f"supervisor-{projection_class.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.projection_class.name

    def start(self) -> None:
        if self._own_listener:
            self.listener.start()
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the supervisor to stop, without waiting (`stop` waits)."""
        self._stopping.set()
        self._news.set()

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        self.request_stop()
        self._thread.join(timeout)
        if self._own_listener:
            self.listener.stop(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._lead_while_elected()
            except Exception as error:
                self.restarts += 1
                log_failure(
                    log, error, "projection %s lost its lock", self.name, then="electing again"
                )
            self._stopping.wait(self.restart_delay)

    def _lead_while_elected(self) -> None:
        """Hold the lock; run (and restart) the runner for as long as the lock is held.

        A runner that fails is restarted without letting the lock go, so a passing error never
        hands the projection (and, for the gateway driver, its sessions) to another process.
        The lock is let go on purpose only when a rebuild waits for it (a handover): the
        runner is stopped first, then this process stands by again.
        """
        while self._wait_for_lock():
            self._lead()
            if not self._stopping.is_set():
                self._on_lock(_UNLOCK)
                self._held_at = None
                log.info("projection %s handed over to a rebuild", self.name)

    def _on_lock(self, statement: str) -> Any:
        """Run `statement` (about this projection's lock) on the listener; raise `LockLost`
        if the lock is held and the listener's connection changed since it was taken."""
        key = lock_key(self.name)

        def run(conn: psycopg.Connection[Any]) -> tuple[Any, int]:
            row = conn.execute(statement, {"key": key}).fetchone()
            return (row[0] if row else None), self.listener.epoch

        found, epoch = self.listener.run(run, timeout=max(5.0, self.check_interval))
        if self._held_at is not None and epoch != self._held_at:
            self._held_at = None
            raise LockLost(f"the lock of projection {self.name} went with its connection")
        return found

    def _lead(self) -> None:
        log.info("this process now runs projection %s", self.name)
        self.is_leader.set()
        try:
            if self.on_elected is not None:
                self.on_elected()
            while not self._stopping.is_set():
                try:
                    self._run_runner()
                except psycopg.Error:
                    raise  # the lock's connection is gone: so is the lock
                except Exception as error:
                    self.restarts += 1
                    log_failure(log, error, "projection %s failed", self.name, then="restarting it")
                    self._on_lock(_STILL_CONNECTED)  # still holding the lock?
                    self._stopping.wait(self.restart_delay)
                else:
                    return  # stopping, or handing over
        finally:
            self.is_leader.clear()
            if self.on_demoted is not None:
                self.on_demoted()

    def _runner(self, generation: int) -> Any:
        projection_class = projection_for(self.projection_class, generation)
        if self.app is None:
            return BatchingProjectionRunner(
                application_class=SessionsApplication,
                projection_class=projection_class,
                view_class=self.view_class,
                env=self.env,
            )
        view = self.view_class(
            datastore=self.app.factory.datastore,  # type: ignore[attr-defined]
            tracking_table_name=tracking_table(self.name, generation),
        )
        return SharedRunner(app=self.app, projection_class=projection_class, view=view)

    def _run_runner(self) -> None:
        """Run the active generation until stopping or until a rebuild waits for the lock.

        Leaving the `with` block stops the runner after the page it is applying: nothing
        is written to the view once the lock is let go."""
        generation = self.listener.run(lambda conn: active_generation(conn, self.name))
        with self._runner(generation) as runner:
            while not self._stopping.is_set():
                runner.run_forever(timeout=0)  # re-raises a runner's error
                if self._handover_wanted():  # raises psycopg.Error if the lock is gone
                    return
                self._sleep()

    def _handover_wanted(self) -> bool:
        return bool(self._on_lock(WAITER_FOR_LOCK))

    def _sleep(self) -> None:
        """Wait `check_interval`, or less when a rebuild announces itself (or a switch)."""
        self._news.wait(self.check_interval)
        self._news.clear()

    def _wait_for_lock(self) -> bool:
        while not self._stopping.is_set():
            try:
                got = self._on_lock(_TRY_LOCK)
            except ListenerDown:
                got = False  # connecting again: try once it is back
            if got:
                self._held_at = self.listener.epoch
                return True
            self._sleep()
        return False


#: Take the lock unless this session holds it already (advisory locks count: taken twice, one
#: unlock would not let it go, and a rebuild waiting for it would wait for ever).
_TRY_LOCK = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' "
    "AND l.pid = pg_backend_pid() AND l.granted AND l.objsubid = 1 "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%(key)s)::bigint) "
    "THEN true ELSE pg_try_advisory_lock(hashtext(%(key)s)) END"
)
_UNLOCK = "SELECT pg_advisory_unlock(hashtext(%(key)s))"
_STILL_CONNECTED = "SELECT %(key)s::text IS NOT NULL"
