"""An application recorder whose subscriptions also poll, so a lost NOTIFY never stalls a view."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from threading import Event, Thread
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, StoredEvent, Subscription
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresSubscription
from psycopg.sql import SQL, Identifier


class PollingSubscription(PostgresSubscription):
    """LISTEN/NOTIFY as usual, plus a wake-up every `interval` seconds as a safety net."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        interval: float = 1.0,
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._poll_stop = Event()
        self._poll_thread = Thread(target=self._poll, args=(interval,), daemon=True)
        self._poll_thread.start()

    def buffered(self) -> bool:
        """Whether the next notification is already read (no wait, no query)."""
        return self._notifications_index < len(self._notifications) or (
            not self._notifications_queue.empty()
        )

    def _poll(self, interval: float) -> None:
        while not self._poll_stop.wait(interval) and not self._has_been_stopped:
            self._has_been_notified.set()

    def stop(self) -> None:
        self._poll_stop.set()
        super().stop()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        self._poll_stop.set()
        super().__exit__(*args, **kwargs)


class PollingApplicationRecorder(PostgresApplicationRecorder):
    poll_interval: ClassVar[float] = 1.0

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return PollingSubscription(self, gt=gt, topics=topics, interval=self.poll_interval)


def event_texts(
    recorder: PostgresApplicationRecorder,
    to_domain_event: Callable[[StoredEvent], Any],
    originator_id: UUID,
    versions: Collection[int],
) -> dict[int, str]:
    """The `text` of the session's events at `versions` (decrypted by the mapper when a
    cipher is set), in one query: message texts live in their events only."""
    if not versions:
        return {}
    statement = SQL(
        "SELECT originator_id, originator_version, topic, state FROM {0}.{1} "
        "WHERE originator_id = %s AND originator_version = ANY(%s)"
    ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
    with recorder.datastore.cursor() as curs:
        curs.execute(statement, (originator_id, list(versions)))
        rows = curs.fetchall()
    texts = {}
    for row in rows:
        stored = StoredEvent(
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        text = getattr(to_domain_event(stored), "text", None)
        if isinstance(text, str):
            texts[stored.originator_version] = text
    return texts
