"""The live event stream's feed in a process: one reader of the log for every open stream.

While any stream is open, one thread takes the log's new events from the process's log hub
(`infra.postgres.loghub`: it listens on the process's one listener and reads on its pool, so
no stream costs a connection), turns each into its stream item once (the webhook body) and
keeps the last of them in a bounded window (`projections.livefeed.FeedWindow`), waking the streams.
A stream behind the window reads the log itself, a page at a time, on two threads shared by
every stream (at most two of the pool's connections at once); one that falls behind the
window after taking from it is too slow and is ended by the API with its position.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from application.sessions import SessionsApplication
from domain.values import session_uuid
from infra.postgres.connect import fetch_one
from infra.postgres.loghub import NOTIFICATION_COLUMNS, HubSubscription, notification
from projections.livefeed import FeedItem, FeedWindow, LiveFeed, Page, Selection, Taken, feed_item

log = logging.getLogger(__name__)
#: The most bytes of event bodies the window holds, whatever its number of events.
WINDOW_BYTES = 16 * 1024 * 1024
#: Threads reading pages of the log for streams behind the window.
PAGE_THREADS = 2


class PostgresLiveFeed(LiveFeed):
    def __init__(
        self, app: SessionsApplication, *, capacity: int, max_bytes: int = WINDOW_BYTES
    ) -> None:
        self.app = app
        recorder = app.recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        self.recorder = recorder
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # the window and the waiters (never across a wait)
        self._window = FeedWindow(0, capacity, max_bytes)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._streams = 0
        self._subscription: HubSubscription | None = None
        self._start_lock = asyncio.Lock()
        self._pages = ThreadPoolExecutor(PAGE_THREADS, thread_name_prefix="stream-page")
        table = SQL("{0}.{1}").format(
            Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
        )
        self._session_page = SQL(
            "SELECT {1} FROM {0} WHERE originator_id = %s AND notification_id > %s "
            "AND notification_id <= %s ORDER BY notification_id LIMIT %s"
        ).format(table, NOTIFICATION_COLUMNS)
        self._head = SQL("SELECT max(notification_id) AS head FROM {0}").format(table)

    # -- life: running while a stream is open -------------------------------------------

    async def open(self) -> None:
        async with self._start_lock:
            self._streams += 1
            if self._subscription is None:
                try:
                    await asyncio.get_running_loop().run_in_executor(self._pages, self._start)
                except BaseException:
                    self._streams -= 1
                    raise

    def _start(self) -> None:
        head = self._read_head()
        subscription = HubSubscription(
            self.recorder, gt=head, poll_interval=getattr(self.recorder, "poll_interval", 1.0)
        )
        window = FeedWindow(head, self.capacity, self.max_bytes)
        with self._lock:
            self._window = window
        self._subscription = subscription
        # The thread fills its own window: one started after a stop never shares it with
        # the stopped one's thread, which may still be ending.
        threading.Thread(
            target=self._feed, args=(subscription, window), name="live-feed", daemon=True
        ).start()

    def close(self) -> None:
        self._streams -= 1
        if self._streams > 0 or self._subscription is None:
            return
        subscription, self._subscription = self._subscription, None
        # Not on the event loop: the last subscription out of the log hub waits for its thread.
        threading.Thread(target=subscription.stop, name="live-feed-stop", daemon=True).start()

    def shutdown(self) -> None:
        """Stop the feed whatever streams remain (the process stops)."""
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None
        self._pages.shutdown(wait=False, cancel_futures=True)

    def _feed(self, subscription: HubSubscription, window: FeedWindow) -> None:
        mapper = self.app.mapper
        while not subscription.stopped:
            try:
                for notification in subscription:
                    item: FeedItem | None = None
                    try:
                        item = feed_item(notification.id, mapper.to_domain_event(notification))
                    except Exception:
                        log.exception("event %d cannot be streamed", notification.id)
                    with self._lock:
                        window.add(notification.id, item)
                    if not subscription.buffered():
                        self._wake()
            except Exception as error:
                if subscription.stopped:
                    return
                log.warning("the live feed could not read the log (%s); reading again", error)
                threading.Event().wait(0.5)

    # -- reads -----------------------------------------------------------------------------

    async def head(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pages, self._read_head)

    def _read_head(self) -> int:
        row = fetch_one(self.recorder.datastore, self._head)
        return int(row["head"] or 0) if row else 0

    def take(self, position: int, selection: Selection, limit: int) -> Taken:
        with self._lock:
            return self._window.take(position, selection, limit)

    async def page(self, position: int, selection: Selection, limit: int) -> Page:
        return await asyncio.get_running_loop().run_in_executor(
            self._pages, self._read_page, position, selection, limit
        )

    def _read_page(self, position: int, selection: Selection, limit: int) -> Page:
        if selection.session_id is None:
            found = self.recorder.select_notifications(
                start=position, limit=limit, inclusive_of_start=False
            )
            if not found:
                return Page([], position)
            return Page(self._items(found, selection), found[-1].id)
        # One session's events only (its own rows, never a scan of everyone's), up to the
        # head read first: with events recorded under the table lock, every event up to a
        # visible head is visible, so the stream is then at that head.
        head = self._read_head()
        with self.recorder.datastore.cursor() as curs:
            curs.execute(
                self._session_page,
                (session_uuid(selection.session_id), position, head, limit),
            )
            rows = curs.fetchall()
        found = [notification(row) for row in rows]
        items = self._items(found, selection)
        return Page(items, found[-1].id if len(found) == limit else max(head, position))

    def _items(self, found: list[Notification], selection: Selection) -> list[FeedItem]:
        items = []
        for found_one in found:
            item = feed_item(found_one.id, self.app.mapper.to_domain_event(found_one))
            if item is not None and selection.of_session(item):
                items.append(item)
        return items

    # -- waiting ---------------------------------------------------------------------------

    async def wait_beyond(self, position: int, timeout: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._window.last > position:
                return
            self._waiters.append((position, future))
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel (3.11)
                await future
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters = [(p, f) for p, f in self._waiters if f is not future]

    def _wake(self) -> None:
        with self._lock:
            last = self._window.last
            ready = [f for p, f in self._waiters if p < last]
            self._waiters = [(p, f) for p, f in self._waiters if p >= last]
        for future in ready:
            loop = future.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
