"""The revocation table: every event that takes keys out of service, written by the recorder
in the transaction that records the event (`infra.postgres.recorder`), never by a projection.

One row per revoking event (`application.revocations`): its position in the log, its session,
the key ids it revokes and whether it deletes the session. A deferred constraint trigger on
the events table refuses to commit a revoking event without its row, so no writer can record
one and forget the other. Events are inserted under the recorder's table lock, so a snapshot
that sees the log up to position N sees every revocation up to N: an API process that reads
the head of the log and the revocations in one snapshot knows its set is complete up to that
head, whatever any projector is doing. A view rebuild never touches this table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, ProgrammingError, StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from application.revocations import REVOCATION_TOPICS, Revocation, revocations_in

TABLE = "sessiond_revocations"
#: The trigger that refuses a revoking event recorded without its row (its topics are
#: `REVOCATION_TOPICS`, frozen in the schema's migrations: a new one needs a migration).
TRIGGER = "sessiond_revocation_recorded"


@dataclass(frozen=True)
class RevocationRow:
    position: int
    session_id: str
    key_ids: tuple[str, ...]
    session_deleted: bool


class RevocationTable:
    """The statements of the revocation table beside the events table `events_table` (the
    table and its trigger are created by the schema's migrations, infra/postgres/)."""

    def __init__(self, schema: str, events_table: str) -> None:
        self.schema = schema
        self.events_table = events_table
        self.table = SQL("{0}.{1}").format(Identifier(schema), Identifier(TABLE))
        self.events = SQL("{0}.{1}").format(Identifier(schema), Identifier(events_table))
        self.insert = SQL(
            "INSERT INTO {table} (position, session_id, key_ids, session_deleted) "
            "SELECT e.notification_id, r.session_id, "
            "ARRAY(SELECT jsonb_array_elements_text(r.key_ids)), r.session_deleted "
            "FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::jsonb[], %s::boolean[]) "
            "AS r(originator_id, originator_version, session_id, key_ids, session_deleted) "
            "JOIN {events} e ON e.originator_id = r.originator_id "
            "AND e.originator_version = r.originator_version"
        ).format(table=self.table, events=self.events)
        self.head = SQL("SELECT max(notification_id) AS head FROM {0}").format(self.events)
        self.since = SQL(
            "SELECT position, session_id, key_ids, session_deleted FROM {0} "
            "WHERE position > %s AND position <= %s ORDER BY position"
        ).format(self.table)
        self.of_session = SQL(
            "SELECT position, key_ids, session_deleted FROM {0} "
            "WHERE session_id = %s ORDER BY position"
        ).format(self.table)

    @staticmethod
    def parameters(
        stored_events: Sequence[StoredEvent], revocations: Sequence[Revocation]
    ) -> tuple[list[Any], ...] | None:
        """The insert's parameters for the revocations of `stored_events`, checked before
        anything is written: every revoking event must come with its revocation, and every
        revocation must belong to one of the events. None when there is nothing to write."""
        revoking = {
            (e.originator_id, e.originator_version)
            for e in stored_events
            if e.topic in REVOCATION_TOPICS
        }
        given = {(r.originator_id, r.originator_version) for r in revocations}
        if revoking != given:
            raise ProgrammingError(
                "the revocations handed to the recorder do not match the revoking events "
                f"recorded ({len(given)} given for {len(revoking)} events)"
            )
        if not revocations:
            return None
        return (
            [r.originator_id for r in revocations],
            [r.originator_version for r in revocations],
            [r.session_id for r in revocations],
            [json.dumps(list(r.key_ids)) for r in revocations],
            [r.session_deleted for r in revocations],
        )

    def read_since(self, curs: Cursor[DictRow], after: int) -> tuple[int, list[RevocationRow]]:
        """The head of the log this snapshot sees, and the revocations after `after` up to
        it: with the ones read before, every revocation up to that head."""
        curs.execute(self.head)
        row = curs.fetchone()
        head = int(row["head"] or 0) if row else 0
        if head <= after:
            return max(head, after), []
        curs.execute(self.since, (after, head))
        return head, self.rows(curs.fetchall())

    @staticmethod
    def rows(records: Sequence[Mapping[str, Any]]) -> list[RevocationRow]:
        """The revocations of rows read with `since`."""
        return [
            RevocationRow(
                position=int(r["position"]),
                session_id=str(r["session_id"]),
                key_ids=tuple(r["key_ids"]),
                session_deleted=bool(r["session_deleted"]),
            )
            for r in records
        ]

    def position_of(self, curs: Cursor[DictRow], session_id: str, key_id: str | None) -> int | None:
        """The position of the event that revoked `key_id` (None: that deleted the session)."""
        curs.execute(self.of_session, (session_id,))
        for row in curs.fetchall():
            if key_id is None and row["session_deleted"]:
                return int(row["position"])
            if key_id is not None and key_id in row["key_ids"]:
                return int(row["position"])
        return None


def backfill(
    table: RevocationTable,
    recorder: ApplicationRecorder,
    datastore: PostgresDatastore,
    to_domain_event: Callable[[StoredEvent], Any],
    page_size: int = 1_000,
) -> int:
    """Write the revocations of events recorded before the table existed (once, when it is
    created in a database that already has a log); return how many were written."""
    insert = SQL(
        "INSERT INTO {0} (position, session_id, key_ids, session_deleted) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (position) DO NOTHING"
    ).format(table.table)
    written = 0
    after = 0
    while True:
        page = recorder.select_notifications(
            after, page_size, topics=sorted(REVOCATION_TOPICS), inclusive_of_start=False
        )
        if not page:
            return written
        rows = []
        for notification in page:
            for revocation in revocations_in([to_domain_event(notification)]):
                rows.append(
                    (
                        notification.id,
                        revocation.session_id,
                        list(revocation.key_ids),
                        revocation.session_deleted,
                    )
                )
        with datastore.transaction(commit=True) as curs:
            curs.executemany(insert, rows)
        written += len(rows)
        after = page[-1].id
