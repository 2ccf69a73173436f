"""The API-key view on PostgreSQL: one JSON document per key, found by key id."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from infra.postgres.views import DocumentView
from projections.keys import ApiKeyView, KeyRow


class PostgresApiKeyView(DocumentView[KeyRow], ApiKeyView):
    row_type = KeyRow
    table_columns = (
        "key_id text PRIMARY KEY, session_id text NOT NULL, key_hash text NOT NULL, "
        "position bigint NOT NULL, doc text NOT NULL, last_used_at timestamptz, "
        "expiry_due timestamptz"
    )
    key_column = "key_id"
    document_columns = "doc, last_used_at"

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements += [
            self._index("position"),
            self._index("session_id"),
            SQL(
                "CREATE INDEX IF NOT EXISTS {0} ON {1} (expiry_due) WHERE expiry_due IS NOT NULL"
            ).format(Identifier(f"{self.table}_expiry_due_idx"), table),
        ]
        # The last use of a key is kept in its own column, written by the API processes,
        # so that recording it never needs an event and the projection never overwrites it.
        self.upsert = SQL(
            "INSERT INTO {0} (key_id, session_id, key_hash, position, doc, expiry_due) "
            "VALUES (%(key_id)s, %(session_id)s, %(key_hash)s, %(position)s, %(doc)s, "
            "%(expiry_due)s) "
            "ON CONFLICT (key_id) DO UPDATE SET position = EXCLUDED.position, doc = EXCLUDED.doc, "
            "expiry_due = EXCLUDED.expiry_due"
        ).format(table)
        # Active keys whose expiry has come and is not recorded yet (an index range scan).
        self.select_due = SQL(
            "SELECT session_id, key_id FROM {0} WHERE expiry_due <= %s ORDER BY expiry_due LIMIT %s"
        ).format(table)
        self.select_of_session = SQL(
            "SELECT doc, last_used_at FROM {0} WHERE session_id = %s ORDER BY key_id"
        ).format(table)
        # Rows a projection batch has locked (a revocation in progress) are skipped rather
        # than waited for: waiting could deadlock with the batch; they are tried again later.
        # All the uses of a flush in one statement (one round trip however many keys).
        self.touch = SQL(
            "UPDATE {0} AS k SET last_used_at = GREATEST(k.last_used_at, u.at) "
            "FROM unnest(%(key_ids)s::text[], %(ats)s::timestamptz[]) AS u(key_id, at) "
            "WHERE k.key_id = u.key_id AND k.key_id IN ("
            "SELECT key_id FROM {0} WHERE key_id = ANY(%(key_ids)s) FOR UPDATE SKIP LOCKED) "
            "RETURNING k.key_id"
        ).format(table)
        self.select_existing = SQL("SELECT key_id FROM {0} WHERE key_id = ANY(%s)").format(table)

    def _fetch(self, curs: Cursor[DictRow]) -> list[KeyRow]:
        rows = []
        for record in curs.fetchall():
            row = msgspec.json.decode(record["doc"], type=KeyRow)
            if record["last_used_at"] is not None:
                row.last_used_at = record["last_used_at"]
            rows.append(row)
        return rows

    def get_key(self, key_id: str) -> KeyRow | None:
        return self._get(key_id)

    columns = ("key_id", "session_id", "key_hash", "position", "doc", "expiry_due")

    def _params(self, row: KeyRow) -> dict[str, Any]:
        params = {c: getattr(row, c) for c in ("key_id", "session_id", "key_hash", "position")}
        params["doc"] = msgspec.json.encode(row).decode()
        # Due to expire: an active key's expiry (revoked or recorded expired: nothing due).
        params["expiry_due"] = row.expires_at if row.is_active else None
        return params

    def due_expiries(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(session id, key id) of at most `limit` active keys whose expiry has come at
        `now` and is not recorded yet, the earliest first."""
        with self._reading() as curs:
            curs.execute(self.select_due, (now, limit))
            return [(str(r["session_id"]), str(r["key_id"])) for r in curs.fetchall()]

    def save_keys(self, rows: Iterable[KeyRow], tracking: Tracking) -> None:
        # As for sessions: the runner's own writes (last use is kept in its own column).
        rows = [msgspec.structs.replace(row, last_used_at=None) for row in rows]
        if self._bulk is not None:
            self._bulk.tracking = tracking
            for row in rows:
                self._stage(row.key_id, row, tracking)
        else:
            self._write(self.upsert, [self._params(row) for row in rows], tracking)
        for row in rows:
            self._written[row.key_id] = row

    def carry_over_last_use(self, curs: Cursor[DictRow], old: PostgresApiKeyView) -> None:
        """Copy the last use of keys (recorded by API processes, held by no event) from the
        view `old` of an earlier generation, keeping the later time of the two."""
        curs.execute(
            SQL(
                "UPDATE {0} AS n SET last_used_at = GREATEST(n.last_used_at, o.last_used_at) "
                "FROM {1} AS o WHERE o.key_id = n.key_id AND o.last_used_at IS NOT NULL"
            ).format(self._ident(), old._ident())
        )

    def all_keys(self) -> list[KeyRow]:
        return self._all()

    def keys_of_session(self, session_id: str) -> list[KeyRow]:
        return self._rows(self.select_of_session, (session_id,))

    def record_last_use(self, uses: dict[str, Any]) -> dict[str, Any]:
        """Record when keys were last used; return the uses it could not record now."""
        if not uses:
            return {}
        key_ids = sorted(uses)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.touch, {"key_ids": key_ids, "ats": [uses[k] for k in key_ids]})
            done = {str(row["key_id"]) for row in curs.fetchall()}
            left = [k for k in key_ids if k not in done]
            if not left:
                return {}
            curs.execute(self.select_existing, (left,))
            existing = {str(row["key_id"]) for row in curs.fetchall()}
        # A locked key is tried again later; a key the view does not have is not.
        return {k: uses[k] for k in left if k in existing}
