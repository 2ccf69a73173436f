"""Runs one projection under a supervisor: elected by an advisory lock, restarted when it fails.

Exactly one process runs each projection: the one holding ``pg_advisory_lock(hashtext(name))``
on a dedicated connection. The others stand by and take over when that connection goes away.
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

log = logging.getLogger(__name__)


#: At most this many events share one view transaction.
BATCH_LIMIT = 500


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

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._lead_while_elected()
            except Exception:
                self.restarts += 1
                log.exception("projection %s lost its lock; electing again", self.name)
            self._stopping.wait(self.restart_delay)

    def _lead_while_elected(self) -> None:
        """Hold the lock; run (and restart) the runner for as long as the lock is held.

        A runner that fails is restarted without letting the lock go, so a passing error never
        hands the projection (and, for the gateway driver, its sessions) to another process.
        """
        with psycopg.connect(self.database_url, autocommit=True) as lock_conn:
            if not self._wait_for_lock(lock_conn):
                return
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
                    except Exception:
                        self.restarts += 1
                        log.exception("projection %s failed; restarting it", self.name)
                        lock_conn.execute("SELECT 1")  # still holding the lock?
                        self._stopping.wait(self.restart_delay)
            finally:
                self.is_leader.clear()
                if self.on_demoted is not None:
                    self.on_demoted()

    def _run_runner(self, lock_conn: psycopg.Connection[Any]) -> None:
        with BatchingProjectionRunner(
            application_class=SessionsApplication,
            projection_class=self.projection_class,
            view_class=self.view_class,
            env=self.env,
        ) as runner:
            while not self._stopping.is_set():
                runner.run_forever(timeout=self.check_interval)  # re-raises a runner's error
                lock_conn.execute("SELECT 1")  # raises psycopg.Error if the lock is gone

    def _wait_for_lock(self, conn: psycopg.Connection[Any]) -> bool:
        while not self._stopping.is_set():
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", ("sessiond:" + self.name,)
            ).fetchone()
            if row is not None and row[0]:
                return True
            self._stopping.wait(self.check_interval)
        return False
