"""The messages view on PostgreSQL: one row per message, found by session and by WhatsApp id."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from domain.values import public_session_id
from infra.postgres.views import DocumentView
from projections.messages import MessagePage, MessageRow, MessagesView, apply_changes


class PostgresMessagesView(DocumentView[MessageRow], MessagesView):
    """One row per message (no text: see `projections.messages`), found by id, by session in
    log order, and by idempotency key."""

    row_type = MessageRow
    table_columns = (
        "message_id text PRIMARY KEY, session_id text NOT NULL, direction text NOT NULL, "
        "status text NOT NULL, idempotency_key text, position bigint NOT NULL, "
        "doc text NOT NULL, whatsapp_id text"
    )
    key_column = "message_id"

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements += [
            SQL(
                "CREATE INDEX IF NOT EXISTS {0} ON {1} (session_id, whatsapp_id) "
                "WHERE whatsapp_id IS NOT NULL"
            ).format(Identifier(f"{self.table}_whatsapp_idx"), table),
            SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} (session_id, position)").format(
                Identifier(f"{self.table}_session_idx"), table
            ),
            SQL(
                "CREATE INDEX IF NOT EXISTS {0} ON {1} (session_id, idempotency_key) "
                "WHERE idempotency_key IS NOT NULL"
            ).format(Identifier(f"{self.table}_idempotency_idx"), table),
        ]
        self.insert = SQL(
            "INSERT INTO {0} (message_id, session_id, direction, status, idempotency_key, "
            "position, doc, whatsapp_id) VALUES (%(message_id)s, %(session_id)s, "
            "%(direction)s, %(status)s, %(idempotency_key)s, %(position)s, %(doc)s, "
            "%(whatsapp_id)s) ON CONFLICT (message_id) DO NOTHING"
        ).format(table)
        self.update = SQL(
            "UPDATE {0} SET status = %(status)s, doc = %(doc)s, whatsapp_id = %(whatsapp_id)s "
            "WHERE message_id = %(message_id)s"
        ).format(table)
        self.select_page = SQL(
            "SELECT doc FROM {0} WHERE session_id = %(session_id)s AND position < %(before)s "
            "AND (%(direction)s::text IS NULL OR direction = %(direction)s) "
            "AND (%(status)s::text IS NULL OR status = %(status)s) "
            "ORDER BY position DESC LIMIT %(limit)s"
        ).format(table)
        self.select_whatsapp = SQL(
            "SELECT doc FROM {0} WHERE session_id = %s AND whatsapp_id = %s AND direction = %s "
            "ORDER BY position LIMIT 1"
        ).format(table)
        # Messages of a session that failed since an instant (the alert rules'
        # messages_failing), from the documents' `failed_at`.
        self.count_failed = SQL(
            "SELECT count(*) AS n FROM {0} WHERE session_id = %s AND status = 'failed' "
            "AND (doc::jsonb ->> 'failed_at')::timestamptz >= %s"
        ).format(table)
        self.select_key = SQL(
            "SELECT doc FROM {0} WHERE session_id = %s AND idempotency_key = %s "
            "ORDER BY position LIMIT 1"
        ).format(table)

    def failed_since(self, session_id: str, since: datetime) -> int:
        """How many of the session's messages failed at or after `since`."""
        with self._reading() as curs:
            curs.execute(self.count_failed, (session_id, since))
            row = curs.fetchone()
        return 0 if row is None else int(row["n"])

    columns = (
        "message_id",
        "session_id",
        "direction",
        "status",
        "idempotency_key",
        "position",
        "doc",
        "whatsapp_id",
    )

    def add_message(self, row: MessageRow, tracking: Tracking) -> None:
        if not self._stage(row.message_id, row, tracking):
            self._write(self.insert, [self._params(row)], tracking)

    def end_page(self) -> None:
        """In a rebuild, every page's rows are copied in at its end (not kept to the end of
        the log, which may hold millions of messages); a later change to one of them is an
        update of the table (see `update_message`)."""
        if self._bulk is not None and self._bulk.replaced:
            self._bulk.inserted.extend(self._bulk.replaced.values())
            self._bulk.replaced.clear()
        super().end_page()

    def update_message(self, message_id: str, changes: dict[str, Any], tracking: Tracking) -> None:
        bulk = self._bulk
        if bulk is not None:
            staged = bulk.replaced.get(message_id)
            if staged is not None:
                bulk.replaced[message_id] = apply_changes(staged, changes)
            else:  # copied in with an earlier page of the rebuild
                with self.datastore.transaction(commit=True) as curs:
                    self._update_stored(curs, message_id, changes)
            bulk.tracking = tracking
            return
        with self._transaction() as curs:  # reads the row: the batch's writes go first
            self._update_stored(curs, message_id, changes)
            self._insert_tracking(curs, tracking)
            self._notify(curs, self.notify_statement)

    def _update_stored(
        self, curs: Cursor[DictRow], message_id: str, changes: dict[str, Any]
    ) -> None:
        curs.execute(self.select_one, (message_id,))  # sees the batch's own writes
        found = curs.fetchone()
        if found is not None:
            row = msgspec.json.decode(found["doc"], type=MessageRow)
            curs.execute(self.update, self._params(apply_changes(row, changes)))

    def sent_message(self, session_id: UUID, whatsapp_id: str) -> tuple[str, str] | None:
        row = self._by_whatsapp_id(session_id, whatsapp_id, "outbound")
        return None if row is None else (row.message_id, row.status)

    def received_message(self, session_id: UUID, whatsapp_id: str) -> bool:
        return self._by_whatsapp_id(session_id, whatsapp_id, "inbound") is not None

    def _by_whatsapp_id(
        self, session_id: UUID, whatsapp_id: str, direction: str
    ) -> MessageRow | None:
        return self._first(
            self.select_whatsapp, (public_session_id(session_id), whatsapp_id, direction)
        )

    def get_message(self, message_id: str) -> MessageRow | None:
        return self._first(self.select_one, (message_id,))

    def list_messages(self, page: MessagePage) -> list[MessageRow]:
        params = {
            "session_id": page.session_id,
            "before": page.before if page.before is not None else 2**62,
            "direction": page.direction,
            "status": page.status,
            "limit": page.limit,
        }
        return self._rows(self.select_page, params)

    def find_by_idempotency_key(self, session_id: str, key: str) -> MessageRow | None:
        return self._first(self.select_key, (session_id, key))
