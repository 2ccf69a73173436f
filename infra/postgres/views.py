"""PostgreSQL implementations of the views: each row and its tracking record in one transaction.

Rows are stored as JSON documents beside the columns used to find them. Every write also
sends ``NOTIFY sessiond_views`` so that API processes refresh their in-memory copy at once.
Generation 0's tables are made by the schema's migrations (infra/postgres/migrations); the
CREATE statements here make a rebuilt generation's (`sessiond projections rebuild`), and
tests/integration/test_migrations.py keeps the two equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from domain.values import public_session_id
from infra.postgres.generations import table_suffix
from projections.messages import MessageRow, MessagesView, apply_changes
from projections.rows import KeyRow, SessionRow
from projections.uptime import Transition, UptimeView
from projections.views import ApiKeyView, SessionStatusView

VIEWS_CHANNEL = "sessiond_views"
#: A view's rows commit with their tracking record, so a commit that a crash of PostgreSQL
#: loses is replayed from the event log: views need not wait for the disk (events do).
SYNC_COMMIT_OFF = "SET LOCAL synchronous_commit = off"
R = TypeVar("R", SessionRow, KeyRow)
Statement = Composed | SQL | str
Params = Any  # a statement's parameters: a mapping or a sequence


@dataclass
class _Bulk:
    """What a bulk load has applied and not yet written."""

    replaced: dict[Hashable, Any] = field(default_factory=dict)
    inserted: list[Any] = field(default_factory=list)
    tracking: Tracking | None = None


def view_table_name(tracking_table_name: str) -> str:
    return tracking_table_name.removesuffix("_tracking")


class BatchingView(PostgresTrackingRecorder):
    """A view whose runner may apply a page of events in one transaction (`batch`): each
    event's rows and tracking record are written on the batch's cursor, and commit together.
    Rows written in the batch are kept in `_written`, since reads on other connections
    cannot see them before the commit."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._batch: Cursor[DictRow] | None = None
        self._deferred: Tracking | None = None  # the batch's last tracking record
        self._pending: list[tuple[Statement, Params]] = []  # the batch's writes, in order
        self._notifies: dict[tuple[int, Params], Statement] = {}  # and its NOTIFYs, once each
        self._written: dict[str, Any] = {}
        self._bulk: _Bulk | None = None

    def tables(self) -> list[str]:
        """Every table this view writes (its rows and its tracking record)."""
        return [self.tracking_table_name]

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Apply the events of a rebuild from scratch into this view's tables, just created
        and read by nothing yet. Rows that each write replaces whole are kept in memory and
        copied in (COPY) once each, in their final state, when the bulk ends, with the last
        tracking record; rows that are only ever inserted are copied in at each `end_page`.
        The tables end as applying the events one by one leaves them, without updating any
        row many times (each update of an indexed row leaves an index entry behind, which
        every later update of that row visits). Rows are read back from `_written`."""
        self._bulk = _Bulk()
        try:
            yield
            self._flush_bulk(final=True)
        except BaseException:
            self._written.clear()
            raise
        finally:
            self._bulk = None

    def end_page(self) -> None:
        """Between pages of a bulk: copy in the rows only ever inserted, so that memory does
        not grow with the log (with the tracking record, unless other rows wait for the end)."""
        if self._bulk is not None and self._bulk.inserted:
            self._flush_bulk(final=False)

    def _flush_bulk(self, *, final: bool) -> None:
        bulk = self._bulk
        assert bulk is not None
        rows = bulk.inserted + (list(bulk.replaced.values()) if final else [])
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)
            if rows:
                with curs.copy(self._copy_statement()) as copy:
                    for row in rows:
                        copy.write_row(self._copy_row(row))
            if bulk.tracking is not None and (final or not bulk.replaced):
                self._insert_tracking(curs, bulk.tracking)
                bulk.tracking = None
        bulk.inserted = []

    def _stage(self, key: Hashable | None, row: Any, tracking: Tracking) -> bool:
        """In a bulk, keep `row` to be copied in (by `key` when later writes replace it,
        else as inserted); False when no bulk is open."""
        if self._bulk is None:
            return False
        if key is None:
            self._bulk.inserted.append(row)
        else:
            self._bulk.replaced[key] = row
        self._bulk.tracking = tracking
        return True

    def _copy_statement(self) -> Composed:
        raise NotImplementedError(f"{type(self).__name__} cannot be bulk-loaded")

    def _copy_row(self, row: Any) -> Sequence[Any]:
        raise NotImplementedError(f"{type(self).__name__} cannot be bulk-loaded")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Events of a page in one transaction, in as few round trips as the page allows.

        Rows that writes replace or insert whole are kept (`_defer`) and written at the end,
        one ``executemany`` per run of the same statement (psycopg pipelines it), before any
        write made at once (`_transaction`), so the order of writes is kept. The tracking
        table holds one row per view, the furthest position, so the page's last tracking
        record is all that need be written; it commits with the page's rows. Each NOTIFY is
        sent once, at the end (PostgreSQL delivers them at the commit anyway)."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)
            self._batch = curs
            self._deferred = None
            try:
                yield
                self._flush_pending(curs)
                if self._deferred is not None:
                    super()._insert_tracking(curs, self._deferred)
                for (_, params), statement in self._notifies.items():
                    curs.execute(statement, params)
            except BaseException:
                self._written.clear()  # rolled back: forget what it wrote
                raise
            finally:
                self._batch = None
                self._deferred = None
                self._pending = []
                self._notifies = {}

    def _flush_pending(self, curs: Cursor[DictRow]) -> None:
        pending, self._pending = self._pending, []
        for _, run in itertools.groupby(pending, key=lambda write: id(write[0])):
            writes = list(run)
            curs.executemany(writes[0][0], [params for _, params in writes])

    def _defer(
        self,
        statement: Statement,
        params: Sequence[Params],
        tracking: Tracking,
        notify: Statement | None = None,
    ) -> None:
        """Write rows (each with `statement`), the tracking record and a NOTIFY: at the end
        of the open batch, else now, in a transaction of their own."""
        if self._batch is None:
            with self._transaction() as curs:
                if params:
                    curs.executemany(statement, params)
                self._insert_tracking(curs, tracking)
                if notify is not None:
                    curs.execute(notify)
            return
        self._pending.extend((statement, p) for p in params)
        self._insert_tracking(self._batch, tracking)
        if notify is not None:
            self._notifies[(id(notify), ())] = notify

    def _notify(self, curs: Cursor[DictRow], statement: Statement, params: Params = ()) -> None:
        """NOTIFY: at the end of the open batch (once however many events ask), else now."""
        if self._batch is None:
            curs.execute(statement, params)
        else:
            self._notifies[(id(statement), tuple(params))] = statement

    def _insert_tracking(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        if self._batch is None:
            super()._insert_tracking(curs, tracking)
        elif self._deferred is None or tracking.notification_id > self._deferred.notification_id:
            self._deferred = tracking

    @contextmanager
    def _reading(self) -> Iterator[Cursor[DictRow]]:
        """A cursor for a read: the open batch's, else one of the pool's. A runner in a batch
        reads on its batch's connection: it never holds one connection while it waits for
        another, so runners sharing a small pool cannot all wait on each other."""
        if self._batch is not None:
            yield self._batch
            return
        with self.datastore.cursor() as curs:
            yield curs

    @contextmanager
    def _transaction(self) -> Iterator[Cursor[DictRow]]:
        """A cursor for writes made at once: the open batch's (after the writes it keeps
        for its end, so that writes stay in order), else one of a transaction of its own."""
        if self._batch is not None:
            self._flush_pending(self._batch)
            yield self._batch
            return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SYNC_COMMIT_OFF)
            yield curs

    def insert_tracking(self, tracking: Tracking) -> None:
        if self._bulk is not None:
            self._bulk.tracking = tracking
            return
        if self._batch is not None:  # nothing else to write: the page's end writes it
            self._insert_tracking(self._batch, tracking)
            return
        with self._transaction() as curs:
            self._insert_tracking(curs, tracking)


class _PostgresView(BatchingView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table = view_table_name(self.tracking_table_name)
        self.notify_statement = SQL("SELECT pg_notify({0}, {1})").format(VIEWS_CHANNEL, self.table)

    def tables(self) -> list[str]:
        return [self.table, self.tracking_table_name]

    #: The columns the projection writes (a bulk load copies them in).
    columns: tuple[str, ...] = ()

    def _params(self, row: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _copy_statement(self) -> Composed:
        return SQL("COPY {0} ({1}) FROM STDIN").format(
            self._ident(), SQL(", ").join(Identifier(c) for c in self.columns)
        )

    def _copy_row(self, row: Any) -> Sequence[Any]:
        params = self._params(row)
        return tuple(params[c] for c in self.columns)

    def _ident(self) -> Composed:
        return SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.table))

    def _index(self, column: str) -> Composed:
        """An index on `column` of the view table (used to find rows changed since a position)."""
        return SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} ({2})").format(
            Identifier(f"{self.table}_{column}_idx"), self._ident(), Identifier(column)
        )

    def _write(self, statement: Composed, params: list[dict[str, Any]], tracking: Tracking) -> None:
        self._defer(statement, params, tracking, self.notify_statement)

    def _fetch(self, curs: Cursor[DictRow], kind: type[R]) -> list[R]:
        return [msgspec.json.decode(row["doc"], type=kind) for row in curs.fetchall()]


class PostgresSessionStatusView(_PostgresView, SessionStatusView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "session_id text PRIMARY KEY, status text NOT NULL, desired text NOT NULL, "
                "labels jsonb NOT NULL, position bigint NOT NULL, doc text NOT NULL)"
            ).format(table),
            self._index("position"),
        ]
        self.upsert = SQL(
            "INSERT INTO {0} (session_id, status, desired, labels, position, doc) "
            "VALUES (%(session_id)s, %(status)s, %(desired)s, %(labels)s, %(position)s, %(doc)s) "
            "ON CONFLICT (session_id) DO UPDATE SET status = EXCLUDED.status, "
            "desired = EXCLUDED.desired, labels = EXCLUDED.labels, "
            "position = EXCLUDED.position, doc = EXCLUDED.doc"
        ).format(table)
        self.select_one = SQL("SELECT doc FROM {0} WHERE session_id = %s").format(table)
        self.select_all = SQL("SELECT doc FROM {0} ORDER BY session_id").format(table)
        self.select_since = SQL("SELECT doc FROM {0} WHERE position > %s").format(table)

    def get_session(self, session_id: str) -> SessionRow | None:
        written: SessionRow | None = self._written.get(session_id)
        if written is not None:
            return written
        with self._reading() as curs:
            curs.execute(self.select_one, (session_id,))
            rows = self._fetch(curs, SessionRow)
        return rows[0] if rows else None

    columns = ("session_id", "status", "desired", "labels", "position", "doc")

    def _params(self, row: SessionRow) -> dict[str, Any]:
        return {
            "session_id": row.session_id,
            "status": row.status,
            "desired": row.desired,
            "labels": msgspec.json.encode(row.labels).decode(),
            "position": row.position,
            "doc": msgspec.json.encode(row).decode(),
        }

    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        if not self._stage(row.session_id, row, tracking):
            self._write(self.upsert, [self._params(row)], tracking)
        # Only the projection's runner writes rows, and it owns this view instance for as
        # long as it holds the projection's lock: what it wrote is what is stored, so the
        # next event of the session needs no read back.
        self._written[row.session_id] = row

    def all_sessions(self) -> list[SessionRow]:
        with self._reading() as curs:
            curs.execute(self.select_all)
            return self._fetch(curs, SessionRow)

    def changed_since(self, curs: Cursor[DictRow], position: int) -> list[SessionRow]:
        curs.execute(self.select_since, (position,))
        return self._fetch(curs, SessionRow)


class PostgresApiKeyView(_PostgresView, ApiKeyView):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "key_id text PRIMARY KEY, session_id text NOT NULL, key_hash text NOT NULL, "
                "position bigint NOT NULL, doc text NOT NULL, last_used_at timestamptz)"
            ).format(table),
            self._index("position"),
            self._index("session_id"),
        ]
        # The last use of a key is kept in its own column, written by the API processes,
        # so that recording it never needs an event and the projection never overwrites it.
        self.upsert = SQL(
            "INSERT INTO {0} (key_id, session_id, key_hash, position, doc) "
            "VALUES (%(key_id)s, %(session_id)s, %(key_hash)s, %(position)s, %(doc)s) "
            "ON CONFLICT (key_id) DO UPDATE SET position = EXCLUDED.position, doc = EXCLUDED.doc"
        ).format(table)
        self.select_one = SQL("SELECT doc, last_used_at FROM {0} WHERE key_id = %s").format(table)
        self.select_all = SQL("SELECT doc, last_used_at FROM {0} ORDER BY key_id").format(table)
        self.select_of_session = SQL(
            "SELECT doc, last_used_at FROM {0} WHERE session_id = %s ORDER BY key_id"
        ).format(table)
        self.select_since = SQL("SELECT doc, last_used_at FROM {0} WHERE position > %s").format(
            table
        )
        # Rows a projection batch has locked (a revocation in progress) are skipped rather
        # than waited for: waiting could deadlock with the batch; they are tried again later.
        self.touch = SQL(
            "UPDATE {0} SET last_used_at = GREATEST(last_used_at, %(at)s) WHERE key_id = ("
            "SELECT key_id FROM {0} WHERE key_id = %(key_id)s FOR UPDATE SKIP LOCKED) "
            "RETURNING key_id"
        ).format(table)

    def _fetch(self, curs: Cursor[DictRow], kind: type[R]) -> list[R]:
        rows = []
        for record in curs.fetchall():
            row = msgspec.json.decode(record["doc"], type=kind)
            if isinstance(row, KeyRow) and record["last_used_at"] is not None:
                row.last_used_at = record["last_used_at"]
            rows.append(row)
        return rows

    def get_key(self, key_id: str) -> KeyRow | None:
        written: KeyRow | None = self._written.get(key_id)
        if written is not None:
            return written
        with self._reading() as curs:
            curs.execute(self.select_one, (key_id,))
            rows = self._fetch(curs, KeyRow)
        return rows[0] if rows else None

    columns = ("key_id", "session_id", "key_hash", "position", "doc")

    def _params(self, row: KeyRow) -> dict[str, Any]:
        return {
            "key_id": row.key_id,
            "session_id": row.session_id,
            "key_hash": row.key_hash,
            "position": row.position,
            "doc": msgspec.json.encode(row).decode(),
        }

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
        with self._reading() as curs:
            curs.execute(self.select_all)
            return self._fetch(curs, KeyRow)

    def keys_of_session(self, session_id: str) -> list[KeyRow]:
        with self._reading() as curs:
            curs.execute(self.select_of_session, (session_id,))
            return self._fetch(curs, KeyRow)

    def changed_since(self, curs: Cursor[DictRow], position: int) -> list[KeyRow]:
        curs.execute(self.select_since, (position,))
        return self._fetch(curs, KeyRow)

    def record_last_use(self, uses: dict[str, Any]) -> dict[str, Any]:
        """Record when keys were last used; return the uses it could not record now."""
        if not uses:
            return {}
        done: set[str] = set()
        with self.datastore.transaction(commit=True) as curs:
            for key_id, at in sorted(uses.items()):
                curs.execute(self.touch, {"key_id": key_id, "at": at})
                if curs.fetchone() is not None:
                    done.add(key_id)
        # A locked key is tried again later; a key the view does not have is not.
        return {k: at for k, at in uses.items() if k not in done and self.get_key(k) is not None}


class PostgresMessagesView(_PostgresView, MessagesView):
    """One row per message (no text: see `projections.messages`), found by id, by session in
    log order, and by idempotency key."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = self._ident()
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "message_id text PRIMARY KEY, session_id text NOT NULL, direction text NOT NULL, "
                "status text NOT NULL, idempotency_key text, position bigint NOT NULL, "
                "doc text NOT NULL, whatsapp_id text)"
            ).format(table),
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
        self.select_one = SQL("SELECT doc FROM {0} WHERE message_id = %s").format(table)
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
        self.select_key = SQL(
            "SELECT doc FROM {0} WHERE session_id = %s AND idempotency_key = %s "
            "ORDER BY position LIMIT 1"
        ).format(table)

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

    def _params(self, row: MessageRow) -> dict[str, Any]:
        return {
            "message_id": row.message_id,
            "session_id": row.session_id,
            "direction": row.direction,
            "status": row.status,
            "idempotency_key": row.idempotency_key,
            "position": row.position,
            "doc": msgspec.json.encode(row).decode(),
            "whatsapp_id": row.whatsapp_id,
        }

    def sent_message(self, session_id: UUID, whatsapp_id: str) -> tuple[str, str] | None:
        row = self._by_whatsapp_id(session_id, whatsapp_id, "outbound")
        return None if row is None else (row.message_id, row.status)

    def received_message(self, session_id: UUID, whatsapp_id: str) -> bool:
        return self._by_whatsapp_id(session_id, whatsapp_id, "inbound") is not None

    def _by_whatsapp_id(
        self, session_id: UUID, whatsapp_id: str, direction: str
    ) -> MessageRow | None:
        with self._reading() as curs:
            curs.execute(
                self.select_whatsapp, (public_session_id(session_id), whatsapp_id, direction)
            )
            rows = self._fetch_messages(curs)
        return rows[0] if rows else None

    def get_message(self, message_id: str) -> MessageRow | None:
        with self._reading() as curs:
            curs.execute(self.select_one, (message_id,))
            rows = self._fetch_messages(curs)
        return rows[0] if rows else None

    def list_messages(
        self,
        session_id: str,
        *,
        direction: str | None = None,
        status: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[MessageRow]:
        params = {
            "session_id": session_id,
            "before": before if before is not None else 2**62,
            "direction": direction,
            "status": status,
            "limit": limit,
        }
        with self._reading() as curs:
            curs.execute(self.select_page, params)
            return self._fetch_messages(curs)

    def find_by_idempotency_key(self, session_id: str, key: str) -> MessageRow | None:
        with self._reading() as curs:
            curs.execute(self.select_key, (session_id, key))
            rows = self._fetch_messages(curs)
        return rows[0] if rows else None

    @staticmethod
    def _fetch_messages(curs: Cursor[DictRow]) -> list[MessageRow]:
        return [msgspec.json.decode(row["doc"], type=MessageRow) for row in curs.fetchall()]


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
        self.insert = SQL(
            "INSERT INTO {0} (session_id, position, at, running, connected) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(table)
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
