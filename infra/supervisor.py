"""Runs one projection under a supervisor: elected by an advisory lock, restarted when it fails.

Exactly one process runs each projection: the one holding ``pg_advisory_lock(hashtext(name))``
on a dedicated connection. The others stand by and take over when that connection goes away.
The leader runs the projection's active generation (`infra/generations.py`), read when it is
elected, and hands the lock over to a rebuild that waits for it (`infra/rebuild.py`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from eventsourcing.projection import ApplicationSubscription, Projection, ProjectionRunner
from eventsourcing.utils import EnvType

from application.sessions import SessionsApplication
from infra.generations import GENERATIONS_CHANNEL, active_generation, projection_for
from infra.pgconnect import connect, unreachable

log = logging.getLogger(__name__)


#: At most this many events share one view transaction.
BATCH_LIMIT = 500
#: Whether a session waits (`pg_advisory_lock`, blocking) for the lock this one holds. Leaders
#: and standbys only ever *try* the lock, so a waiter is a rebuild asking for a handover.
WAITER_FOR_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND NOT l.granted "
    "AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint)"
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


class ProjectionSupervisor:
    """Keeps a `ProjectionRunner` going for as long as this process holds the projection's lock."""

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
    ) -> None:
        self.projection_class = projection_class
        self.view_class = view_class
        self.env: EnvType = dict(env)
        self.database_url = database_url
        self.check_interval = check_interval
        self.restart_delay = restart_delay
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.restarts = 0
        self.is_leader = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"supervisor-{projection_class.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.projection_class.name

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the supervisor to stop, without waiting (`stop` waits)."""
        self._stopping.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._lead_while_elected()
            except Exception as error:
                self.restarts += 1
                if unreachable(error):
                    log.warning(
                        "projection %s lost its lock (%s); electing again", self.name, error
                    )
                else:
                    log.exception("projection %s lost its lock; electing again", self.name)
            self._stopping.wait(self.restart_delay)

    def _lead_while_elected(self) -> None:
        """Hold the lock; run (and restart) the runner for as long as the lock is held.

        A runner that fails is restarted without letting the lock go, so a passing error never
        hands the projection (and, for the gateway driver, its sessions) to another process.
        The lock is let go on purpose only when a rebuild waits for it (a handover): the
        runner is stopped first, then this process stands by again.
        """
        with connect(self.database_url, autocommit=True) as lock_conn:
            lock_conn.execute(f"LISTEN {GENERATIONS_CHANNEL}")
            while self._wait_for_lock(lock_conn):
                self._lead(lock_conn)
                if not self._stopping.is_set():
                    lock_conn.execute(
                        "SELECT pg_advisory_unlock(hashtext(%s))", (lock_key(self.name),)
                    )
                    log.info("projection %s handed over to a rebuild", self.name)

    def _lead(self, lock_conn: psycopg.Connection[Any]) -> None:
        log.info("this process now runs projection %s", self.name)
        self.is_leader.set()
        try:
            if self.on_elected is not None:
                self.on_elected()
            while not self._stopping.is_set():
                try:
                    self._run_runner(lock_conn)
                except psycopg.Error:
                    raise  # the lock's connection is gone: so is the lock
                except Exception as error:
                    self.restarts += 1
                    if unreachable(error):
                        log.warning("projection %s failed (%s); restarting it", self.name, error)
                    else:
                        log.exception("projection %s failed; restarting it", self.name)
                    lock_conn.execute("SELECT 1")  # still holding the lock?
                    self._stopping.wait(self.restart_delay)
                else:
                    return  # stopping, or handing over
        finally:
            self.is_leader.clear()
            if self.on_demoted is not None:
                self.on_demoted()

    def _run_runner(self, lock_conn: psycopg.Connection[Any]) -> None:
        """Run the active generation until stopping or until a rebuild waits for the lock.

        Leaving the `with` block stops the runner after the page it is applying: nothing
        is written to the view once the lock is let go."""
        generation = active_generation(lock_conn, self.name)
        with BatchingProjectionRunner(
            application_class=SessionsApplication,
            projection_class=projection_for(self.projection_class, generation),
            view_class=self.view_class,
            env=self.env,
        ) as runner:
            while not self._stopping.is_set():
                runner.run_forever(timeout=0)  # re-raises a runner's error
                if self._handover_wanted(lock_conn):  # raises psycopg.Error if the lock is gone
                    return
                self._sleep(lock_conn)

    def _handover_wanted(self, lock_conn: psycopg.Connection[Any]) -> bool:
        row = lock_conn.execute(WAITER_FOR_LOCK, (lock_key(self.name),)).fetchone()
        return bool(row and row[0])

    def _sleep(self, conn: psycopg.Connection[Any]) -> None:
        """Wait `check_interval`, or less when a rebuild announces itself (or a switch)."""
        for _ in conn.notifies(timeout=self.check_interval, stop_after=1):
            pass

    def _wait_for_lock(self, conn: psycopg.Connection[Any]) -> bool:
        while not self._stopping.is_set():
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (lock_key(self.name),)
            ).fetchone()
            if row is not None and row[0]:
                return True
            self._sleep(conn)
        return False
