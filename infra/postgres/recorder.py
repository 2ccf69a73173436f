"""The application recorder: its subscriptions share one reader of the log per process
(`infra.postgres.loghub`), which also polls, so a lost NOTIFY never stalls a view; it chains what
it records into the audit chain (`infra.postgres.audit`) and writes the revocations of what it
records (`infra.postgres.revocations`), both in the same transaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from application.ports import RevocationLog
from application.revocations import REVOCATIONS
from infra.postgres.audit import ChainWriter
from infra.postgres.connect import fetch_all
from infra.postgres.listener import ProcessListener
from infra.postgres.loghub import HubSubscription
from infra.postgres.revocations import RevocationTable
from infra.postgres.views import VIEWS_CHANNEL


class PollingApplicationRecorder(PostgresApplicationRecorder, RevocationLog):
    poll_interval: ClassVar[float] = 1.0
    #: The process's listener, which its subscriptions' reader listens on (set by the
    #: composition root; without one, the reader gets a listener of its own).
    listener: ProcessListener | None = None

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        if datastore.enable_db_functions:  # its insert function would skip the revocations
            raise ProgrammingError("POSTGRES_ENABLE_DB_FUNCTIONS is not supported by sessiond")
        self.revocations = RevocationTable(datastore.schema, events_table_name)
        self.chain = ChainWriter()
        self._notify_views = SQL("NOTIFY {0}").format(Identifier(VIEWS_CHANNEL))

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """Record the events chained into the audit chain and, in the same transaction and
        under the same table lock, the revocations among them; then wake every API process's
        copy of the views."""
        # Checked before anything is written (an error here leaves nothing recorded).
        parameters = RevocationTable.parameters(stored_events, kwargs.get(REVOCATIONS, ()))
        self._lock_table(curs)
        self._notify_channel(curs)
        self.chain.insert_events(curs, stored_events)
        if parameters is not None:
            with curs.connection.cursor() as revocations:
                revocations.execute(self.revocations.insert, parameters)
                revocations.execute(self._notify_views)

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The notification ids of what `_insert_stored_events` inserted, in order."""
        ids = [row["notification_id"] for row in curs.fetchall()]
        if len(ids) != len(stored_events):
            raise ProgrammingError(f"{len(ids)} notification ids for {len(stored_events)} events")
        return ids

    def revocation_position(self, session_id: str, key_id: str | None) -> int | None:
        with self.datastore.cursor() as curs:
            return self.revocations.position_of(curs, session_id, key_id)

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
    texts = {}
    for row in fetch_all(recorder.datastore, statement, (originator_id, list(versions))):
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
