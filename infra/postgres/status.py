"""The status view on PostgreSQL: one JSON document per session."""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.sql import SQL

from infra.postgres.views import DocumentView, SetWrite
from projections.status import SessionRow, SessionStatusView


class PostgresSessionStatusView(DocumentView[SessionRow], SessionStatusView):
    row_type = SessionRow
    table_columns = (
        "session_id text PRIMARY KEY, status text NOT NULL, desired text NOT NULL, "
        "labels jsonb NOT NULL, position bigint NOT NULL, doc text NOT NULL"
    )
    key_column = "session_id"

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements.append(self._index("position"))
        # A page's rows at once (the last of each session's): see `SetWrite`.
        self.upsert = SetWrite(
            (
                SQL(
                    "INSERT INTO {0} (session_id, status, desired, labels, position, doc) "
                    "SELECT u.session_id, u.status, u.desired, u.labels::jsonb, u.position, "
                    "u.doc FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
                    "%b::bigint[], %b::text[]) AS u(session_id, status, desired, labels, "
                    "position, doc) "
                    "ON CONFLICT (session_id) DO UPDATE SET status = EXCLUDED.status, "
                    "desired = EXCLUDED.desired, labels = EXCLUDED.labels, "
                    "position = EXCLUDED.position, doc = EXCLUDED.doc"
                ).format(table),
            ),
            rows=lambda params: (tuple(params[c] for c in self.columns),),
            key=lambda params: params["session_id"],
            replaces=True,
        )
        # The changed rows undecoded, with the columns that place them (see `changed_documents`).
        self.select_documents_since = SQL(
            "SELECT session_id, position, doc FROM {0} WHERE position > %s"
        ).format(table)

    def get_session(self, session_id: str) -> SessionRow | None:
        return self._get(session_id)

    columns = ("session_id", "status", "desired", "labels", "position", "doc")

    def _params(self, row: SessionRow) -> dict[str, Any]:
        params = super()._params(row)
        params["labels"] = msgspec.json.encode(row.labels).decode()
        return params

    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        if not self._stage(row.session_id, row, tracking):
            self._write(self.upsert, [self._params(row)], tracking)
        # Only the projection's runner writes rows, and it owns this view instance for as
        # long as it holds the projection's lock: what it wrote is what is stored, so the
        # next event of the session needs no read back.
        self._written[row.session_id] = row

    def all_sessions(self) -> list[SessionRow]:
        return self._all()

    @staticmethod
    def changed_documents(curs: Cursor[Any]) -> list[tuple[str, int, str]]:
        """The rows of `select_documents_since`, already executed on `curs`, undecoded:
        (session id, position, document); `decode` makes a document a row."""
        return [(str(r[0]), int(r[1]), str(r[2])) for r in curs.fetchall()]

    @staticmethod
    def decode(document: str) -> SessionRow:
        return msgspec.json.decode(document, type=SessionRow)
