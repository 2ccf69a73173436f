"""The uptime view on PostgreSQL: one transition per lifecycle event of a session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg.sql import SQL, Composed, Identifier

from infra.postgres.generations import table_suffix
from infra.postgres.views import BatchingView, SetWrite
from projections.uptime import Transition, UptimeView


class PostgresUptimeView(BatchingView, UptimeView):
    """Transitions of every session (``sessiond_uptime``, or ``sessiond_uptime_g{N}`` for a
    rebuilt generation N), found by session and time."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table = "sessiond_uptime" + table_suffix(self.tracking_table_name)
        table = SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.table))
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} (session_id uuid NOT NULL, "
                "position bigint NOT NULL, at timestamptz NOT NULL, running boolean NOT NULL, "
                "connected boolean NOT NULL, PRIMARY KEY (session_id, position))"
            ).format(table),
            SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} (session_id, at, position)").format(
                Identifier(self.table + "_at"), table
            ),
        ]
        # A page's transitions at once: see `SetWrite`.
        self.insert = SetWrite(
            (
                SQL(
                    "INSERT INTO {0} (session_id, position, at, running, connected) "
                    "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::timestamptz[], "
                    "%b::bool[], %b::bool[]) ON CONFLICT DO NOTHING"
                ).format(table),
            ),
            key=lambda row: (row[0], row[1]),
        )
        self.copy = SQL(
            "COPY {0} (session_id, position, at, running, connected) FROM STDIN"
        ).format(table)
        self.select_before = SQL(
            "SELECT at, running, connected FROM {0} WHERE session_id = %s "
            "AND at <= %s ORDER BY at DESC, position DESC LIMIT 1"
        ).format(table)
        # The first link: found walking the session's transitions from its creation, which
        # is where it usually is (the second or third transition).
        self.select_link = SQL(
            "SELECT at, running, connected FROM {0} WHERE session_id = %s "
            "AND connected AND at <= %s ORDER BY at, position LIMIT 1"
        ).format(table)
        self.select_within = SQL(
            "SELECT at, running, connected FROM {0} WHERE session_id = %s "
            "AND at > %s AND at <= %s ORDER BY at, position"
        ).format(table)

    def tables(self) -> list[str]:
        return [self.table, self.tracking_table_name]

    def add_transition(self, session_id: UUID, transition: Transition, tracking: Tracking) -> None:
        row = (
            session_id,
            tracking.notification_id,
            transition.at,
            transition.running,
            transition.connected,
        )
        if self._stage(None, row, tracking):  # one row per event, never updated
            return
        self._defer(self.insert, [row], tracking)

    def _copy_statement(self) -> Composed:
        return self.copy

    def _copy_row(self, row: Sequence[Any]) -> Sequence[Any]:
        return row

    def transitions(self, session_id: UUID, start: datetime, end: datetime) -> list[Transition]:
        with self._reading() as curs:
            curs.execute(self.select_before, (session_id, start))
            before = curs.fetchall()
            if before and not before[0]["connected"]:
                curs.execute(self.select_link, (session_id, start))
                before = curs.fetchall() + before
            curs.execute(self.select_within, (session_id, start, end))
            rows = before + curs.fetchall()
        return [Transition(**row) for row in rows]
