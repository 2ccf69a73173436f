"""One reader of the event log per process, shared by every projection runner in it.

Each projection runner used to read the log for itself: its own LISTEN connection and thread,
its own pull thread and one ``SELECT`` per commit of anyone, so a process running six
projections read every new event six times, from six threads woken by every NOTIFY. A
`LogHub` reads new events once (after each NOTIFY, and every `poll_interval` as a safety net
for a lost one) and hands each page to the `HubSubscription` of every runner that is caught up.

A subscription starting behind the hub reads the log for itself, page by page, on its
runner's thread, until the hub's window (the last `WINDOW` notifications it read) covers
where it is; it then attaches and takes the rest of the window and every later page from the
hub. One that falls more than `BACKLOG_LIMIT` notifications behind (its view is slow) is
detached, so that the hub never holds an unbounded queue for it, and reads for itself again.
Either way it yields every notification after its start once, in order: positions, tracking
and exactly-once are the runners' business, as before.

The hub costs no connection of its own: it listens on the process's listener
(`infra.postgres.listener`, the recorder's ``listener``) and reads on the recorder's
pool. A recorder without a listener (tests) gets the hub a listener of its own.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from eventsourcing.persistence import ApplicationRecorder, Notification, Subscription
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.conninfo import make_conninfo
from psycopg.sql import SQL, Identifier

from infra.postgres.connect import unreachable
from infra.postgres.listener import ProcessListener

log = logging.getLogger(__name__)

#: Notifications the hub keeps, so a subscription a little behind attaches without a query.
WINDOW = 5000
#: A subscription with more than this many notifications queued is detached (see above).
BACKLOG_LIMIT = 20_000
#: How often the listener looks whether it should stop (the longest a release waits for it).
STOP_CHECK = 0.2
#: Notifications per query, the hub's and a catching-up subscription's.
PAGE = 500
#: The columns of the events table that make a `Notification` (`notification`).
NOTIFICATION_COLUMNS = SQL("notification_id, originator_id, originator_version, topic, state")


def notification(row: Any) -> Notification:
    """The `Notification` of a row of the events table read with `NOTIFICATION_COLUMNS`."""
    return Notification(
        id=row["notification_id"],
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def _connect_kwargs(recorder: PostgresApplicationRecorder) -> dict[str, Any]:
    """What the recorder's pool connects with (but its row factory)."""
    kwargs = recorder.datastore.pool.kwargs
    found = kwargs() if callable(kwargs) else kwargs or {}
    return {
        k: v
        for k, v in found.items()
        if k not in ("row_factory", "prepare_threshold", "application_name")
    }


class LogHub:
    """Reads the log of one database and events table for every subscription of a process."""

    _hubs: ClassVar[dict[tuple[Any, ...], LogHub]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, key: tuple[Any, ...], recorder: PostgresApplicationRecorder, poll_interval: float
    ) -> None:
        self._key = key
        self._datastore = recorder.datastore
        shared: ProcessListener | None = getattr(recorder, "listener", None)
        self._own_listener = shared is None
        self._listener = shared or ProcessListener(
            make_conninfo("", **_connect_kwargs(recorder)), "sessiond-loghub"
        )
        self._channel = recorder.channel_name
        table = SQL("{0}.{1}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )
        self._select = SQL(
            "SELECT {1} FROM {0} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(table, NOTIFICATION_COLUMNS)
        self._select_head = SQL("SELECT max(notification_id) AS head FROM {0}").format(table)
        self.poll_interval = poll_interval
        self._refs = 0
        self._lock = threading.Lock()
        self._window: deque[Notification] = deque()
        self._last = 0  # the last notification read
        self._window_start = 0  # the window holds every notification after this, to `_last`
        self._subscribers: set[HubSubscription] = set()
        self._notified = threading.Event()
        self._stopping = threading.Event()
        self.reads = 0  # queries that found something (for tests)
        self._threads = [threading.Thread(target=self._pull, name="loghub-pull", daemon=True)]

    # -- the registry: one hub per database and table, for as long as anyone subscribes ----

    @classmethod
    def acquire(cls, recorder: PostgresApplicationRecorder, poll_interval: float) -> LogHub:
        key = (
            tuple(sorted((k, str(v)) for k, v in _connect_kwargs(recorder).items())),
            id(getattr(recorder, "listener", None)),
            recorder.datastore.schema,
            recorder.events_table_name,
        )
        while True:
            with cls._registry_lock:
                hub = cls._hubs.get(key)
                if hub is not None:
                    hub._refs += 1
                    hub.poll_interval = min(hub.poll_interval, poll_interval)
                    return hub
            # Connect without holding the registry (a slow server must not stall the others'
            # subscribe and release); raises if the database cannot be reached.
            fresh = LogHub(key, recorder, poll_interval)
            fresh._read_head()
            with cls._registry_lock:
                if key not in cls._hubs:  # else another thread made one meanwhile: use it
                    fresh._refs = 1
                    cls._hubs[key] = fresh
                    fresh._start_threads()
                    return fresh

    def release(self) -> None:
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            del self._hubs[self._key]
        self._stopping.set()
        self._notified.set()
        self._listener.unlisten(self._channel, self._on_notify)
        if self._own_listener:
            self._listener.stop()
        for thread in self._threads:
            thread.join(5)

    # -- reading ------------------------------------------------------------------------------

    def _on_notify(self, _: Any) -> None:
        self._notified.set()  # also after the listener (re)connects: read what was missed

    def _read_head(self) -> None:
        with self._datastore.get_connection() as conn:
            row = conn.execute(self._select_head).fetchone()
        self._last = self._window_start = int(row["head"] or 0) if row else 0

    def _start_threads(self) -> None:
        self._listener.listen(self._channel, self._on_notify)
        if self._own_listener:
            self._listener.start()
        for thread in self._threads:
            thread.start()

    def _pull(self) -> None:
        while not self._stopping.is_set():
            self._notified.wait(self.poll_interval)
            self._notified.clear()
            try:
                with self._datastore.get_connection() as conn:
                    while not self._stopping.is_set() and self._read_page(conn) == PAGE:
                        pass
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning(
                    "the event log reader failed; reading again", exc_info=not unreachable(error)
                )
                self._stopping.wait(0.5)

    def _read_page(self, conn: psycopg.Connection[Any]) -> int:
        rows = conn.execute(self._select, (self._last, PAGE)).fetchall()
        if not rows:
            return 0
        page = [notification(row) for row in rows]
        self.reads += 1
        with self._lock:
            self._window.extend(page)
            while len(self._window) > WINDOW:
                self._window_start = self._window.popleft().id
            self._last = page[-1].id
            for subscriber in list(self._subscribers):
                if not subscriber._offer(page):  # too far behind: it reads for itself
                    self._subscribers.discard(subscriber)
        return len(page)

    # -- subscriptions ----------------------------------------------------------------------

    def attach(self, subscriber: HubSubscription) -> bool:
        """Attach `subscriber` if the window covers where it is, with the rest of the window."""
        with self._lock:
            if subscriber._upto < self._window_start:
                return False
            if not subscriber._offer([n for n in self._window if n.id > subscriber._upto]):
                return False
            self._subscribers.add(subscriber)
            return True

    def detach(self, subscriber: HubSubscription) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)


class HubSubscription(Subscription[ApplicationRecorder]):
    """Every notification after `gt` (of `topics`, if any), once each, in order: read from the
    log until the hub covers it, then taken from the hub."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._pg_recorder = recorder
        self._upto = gt or 0  # the last notification queued here (or skipped by topic)
        self._page: Sequence[Notification] = ()
        self._index = 0
        self._pages: deque[Sequence[Notification]] = deque()
        self._queued = 0
        self._attached = False
        self._cond = threading.Condition()
        self._hub = LogHub.acquire(recorder, poll_interval)

    def _offer(self, page: Sequence[Notification]) -> bool:
        """Queue what of `page` comes after `_upto` (called by the hub, under its lock).
        False, queueing nothing, when this subscription is too far behind to take more."""
        with self._cond:
            if self._has_been_stopped:
                return False
            if self._queued > BACKLOG_LIMIT:
                self._attached = False
                self._cond.notify_all()
                return False
            self._queue(page)
            self._attached = True
            self._cond.notify_all()
            return True

    def _queue(self, page: Sequence[Notification]) -> None:
        fresh = [n for n in page if n.id > self._upto]
        if not fresh:
            return
        self._upto = fresh[-1].id
        if self._topics:
            fresh = [n for n in fresh if n.topic in self._topics]
        if fresh:
            self._pages.append(fresh)
            self._queued += len(fresh)

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called (iterating then ends)."""
        return self._has_been_stopped

    def buffered(self) -> bool:
        """Whether the next notification is already here (no wait, no query)."""
        return self._index < len(self._page) or bool(self._pages)

    def __next__(self) -> Notification:
        while True:
            with self._cond:
                if self._has_been_stopped:
                    raise StopIteration
                if self._index < len(self._page):
                    notification = self._page[self._index]
                    self._index += 1
                    return notification
                if self._pages:
                    self._page, self._index = self._pages.popleft(), 0
                    self._queued -= len(self._page)
                    continue
                if self._attached:
                    self._cond.wait(1.0)
                    continue
            self._catch_up()

    def _catch_up(self) -> None:
        """Attach to the hub, or read the next page of the log here (this runner's thread)."""
        if self._hub.attach(self):
            return
        page = self._pg_recorder.select_notifications(
            start=self._upto, limit=PAGE, inclusive_of_start=False
        )
        with self._cond:
            self._queue(page)
        if not page:  # the hub has not read this far yet: it will soon
            self._hub._notified.set()
            with self._cond:
                self._cond.wait(0.01)

    def stop(self) -> None:
        with self._cond:
            if self._has_been_stopped:
                return
            super().stop()
            self._cond.notify_all()
        self._hub.detach(self)
        self._hub.release()
