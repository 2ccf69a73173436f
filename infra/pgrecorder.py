"""An application recorder whose subscriptions share one reader of the log per process
(`infra.loghub`), which also polls, so a lost NOTIFY never stalls a view."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, StoredEvent, Subscription
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from infra.loghub import HubSubscription


class PollingApplicationRecorder(PostgresApplicationRecorder):
    poll_interval: ClassVar[float] = 1.0

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return HubSubscription(self, gt=gt, topics=topics, poll_interval=self.poll_interval)


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
