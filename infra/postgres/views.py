"""What every view on PostgreSQL shares: each row and its tracking record in one transaction,
a page of events in one batch, and bulk loads for rebuilds.

Each view's own tables and queries are in a module of its own: `infra.postgres.status`,
`.keys`, `.messages`, `.uptime`, `.gateway` and `.webhooks`. Document views store a row as a
JSON document beside the columns used to find it. Every write also sends
``NOTIFY sessiond_views`` so that API processes refresh their in-memory copy at once.
Generation 0's tables are made by the schema's migrations (infra/postgres/migrations); the
CREATE statements of each view make a rebuilt generation's (`sessiond projections rebuild`),
and tests/integration/test_migrations.py keeps the two equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, LiteralString, TypeVar

import msgspec
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

VIEWS_CHANNEL = "sessiond_views"
#: A view's rows commit with their tracking record, so a commit that a crash of PostgreSQL
#: loses is replayed from the event log: views need not wait for the disk (events do).
SYNC_COMMIT_OFF = "SET LOCAL synchronous_commit = off"
D = TypeVar("D", bound=msgspec.Struct)
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


class SetWrite:
    """A write that a page makes for many rows, in one statement per run instead of one per
    row: `statements` take one array per column (``unnest(%b::uuid[], …)``, binary: text
    arrays are escaped element by element) and are executed in turn with the same arrays;
    `rows` turns one write's parameters into its rows' columns (by default, the parameters
    are one row's columns).

    Statements are planned once per page rather than once per event (sessiond prepares none,
    for PgBouncer), and psycopg sends columns instead of rows. `key` names what a write
    touches or reads (a session): the writes of one key keep their order, and one statement
    never meets a key twice (so ``ON CONFLICT DO UPDATE`` never meets a row twice). When
    `replaces`, a write replaces its key's row whole: of several in a row for one key, only
    the last is written.
    """

    def __init__(
        self,
        statements: Sequence[Statement],
        key: Callable[[Params], Hashable],
        *,
        rows: Callable[[Params], Iterable[Sequence[Any]]] = lambda params: (params,),
        replaces: bool = False,
    ) -> None:
        self.statements = tuple(statements)
        self.rows = rows
        self.key = key
        self.replaces = replaces

    def execute(self, curs: Cursor[DictRow], params: Sequence[Params]) -> None:
        columns = [
            list(column)
            for column in zip(
                *itertools.chain.from_iterable(self.rows(p) for p in params), strict=True
            )
        ]
        if not columns:
            return
        for statement in self.statements:
            curs.execute(statement, columns)


class _Layers:
    """Set writes waiting to be executed: a key's n-th write is in layer n, so that running the
    layers in order keeps each key's writes in order while each layer is one statement per
    kind of write (the keys of one layer are all different)."""

    def __init__(self) -> None:
        self.layers: list[dict[int, tuple[SetWrite, list[Params]]]] = []
        # Each key's latest write: (its layer, the set write, its index there); the key's next
        # write goes in the layer after it.
        self.latest: dict[Hashable, tuple[int, SetWrite, int]] = {}

    def add(self, write: SetWrite, params: Params) -> None:
        key = write.key(params)
        latest = self.latest.get(key)
        if write.replaces and latest is not None and latest[1] is write:
            layer, _, index = latest
            self.layers[layer][id(write)][1][index] = params
            return
        layer = 0 if latest is None else latest[0] + 1
        if layer == len(self.layers):
            self.layers.append({})
        _, waiting = self.layers[layer].setdefault(id(write), (write, []))
        waiting.append(params)
        self.latest[key] = (layer, write, len(waiting) - 1)

    def flush(self, curs: Cursor[DictRow]) -> None:
        for layer in self.layers:
            for write, params in layer.values():
                write.execute(curs, params)
        self.layers, self.latest = [], {}


def _write_in_order(
    curs: Cursor[DictRow], writes: Sequence[tuple[Statement | SetWrite, Params]]
) -> None:
    """`writes` in their order, in one pipeline (one round trip for the lot): set writes in
    layers (`_Layers`) up to the next other write, and a run of one other statement as one
    ``executemany``."""
    if not writes:
        return
    layers = _Layers()
    with curs.connection.pipeline():
        for _, run in itertools.groupby(writes, key=lambda write: id(write[0])):
            same = list(run)
            statement = same[0][0]
            if isinstance(statement, SetWrite):
                for _, params in same:
                    layers.add(statement, params)
                continue
            layers.flush(curs)
            curs.executemany(statement, [params for _, params in same])
        layers.flush(curs)


class BatchingView(PostgresTrackingRecorder):
    """A view whose runner may apply a page of events in one transaction (`batch`): each
    event's rows and tracking record are written on the batch's cursor, and commit together.
    Rows written in the batch are kept in `_written`, since reads on other connections
    cannot see them before the commit."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._batch: Cursor[DictRow] | None = None
        self._deferred: Tracking | None = None  # the batch's last tracking record
        self._pending: list[tuple[Statement | SetWrite, Params]] = []  # the batch's writes
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
        set writes in a few statements over columns (`SetWrite`), others one ``executemany``
        per run of the same statement (psycopg pipelines them), before any write made at once
        (`_transaction`), so the order of writes is kept. The tracking table holds one row per
        view, the furthest position, so the page's last tracking record is all that need be
        written; it commits with the page's rows. Each NOTIFY is sent once, at the end
        (PostgreSQL delivers them at the commit anyway)."""
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
        _write_in_order(curs, pending)

    def _defer(
        self,
        statement: Statement | SetWrite,
        params: Sequence[Params],
        tracking: Tracking,
        notify: Statement | None = None,
    ) -> None:
        """Write rows (each with `statement`), the tracking record and a NOTIFY: at the end
        of the open batch, else now, in a transaction of their own."""
        self._defer_writes([(statement, p) for p in params], tracking, notify)

    def _defer_writes(
        self,
        writes: Sequence[tuple[Statement | SetWrite, Params]],
        tracking: Tracking,
        notify: Statement | None = None,
    ) -> None:
        """`_defer` for writes of several statements, kept in their order."""
        if self._batch is None:
            with self._transaction() as curs:
                _write_in_order(curs, writes)
                self._insert_tracking(curs, tracking)
                if notify is not None:
                    curs.execute(notify)
            return
        self._pending.extend(writes)
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


class DocumentView(BatchingView, Generic[D]):
    """A view whose rows (`row_type`) are stored as JSON documents (column ``doc``) beside
    the columns that find them: one table, made from `table_columns`, keyed by `key_column`.
    Rows this instance wrote are read back from `_written`; every other read decodes what
    `document_columns` selects (`_fetch`)."""

    #: The type of the view's rows.
    row_type: type[D]
    #: The view table's column definitions (its CREATE TABLE statement's body).
    table_columns: LiteralString = ""
    #: The column that finds one row.
    key_column: LiteralString = ""
    #: What a read of rows selects (the document, and what `_fetch` adds to it).
    document_columns: LiteralString = "doc"
    #: The columns the projection writes (a bulk load copies them in).
    columns: tuple[str, ...] = ()

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.table = view_table_name(self.tracking_table_name)
        self.notify_statement = SQL("SELECT pg_notify({0}, {1})").format(VIEWS_CHANNEL, self.table)
        table = self._ident()
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {0} ({1})").format(table, SQL(self.table_columns))
        )
        selected = SQL(self.document_columns)
        key = Identifier(self.key_column)
        self.select_one = SQL("SELECT {0} FROM {1} WHERE {2} = %s").format(selected, table, key)
        self.select_all = SQL("SELECT {0} FROM {1} ORDER BY {2}").format(selected, table, key)
        self.select_since = SQL("SELECT {0} FROM {1} WHERE position > %s").format(selected, table)

    def tables(self) -> list[str]:
        return [self.table, self.tracking_table_name]

    def _params(self, row: D) -> dict[str, Any]:
        """What a write of `row` sets: each of `columns`, the row's field of that name, and
        the row as a document."""
        params = {c: getattr(row, c) for c in self.columns if c != "doc"}
        params["doc"] = msgspec.json.encode(row).decode()
        return params

    def _copy_statement(self) -> Composed:
        return SQL("COPY {0} ({1}) FROM STDIN").format(
            self._ident(), SQL(", ").join(Identifier(c) for c in self.columns)
        )

    def _copy_row(self, row: D) -> Sequence[Any]:
        params = self._params(row)
        return tuple(params[c] for c in self.columns)

    def _ident(self) -> Composed:
        return SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(self.table))

    def _index(self, column: str) -> Composed:
        """An index on `column` of the view table (used to find rows changed since a position)."""
        return SQL("CREATE INDEX IF NOT EXISTS {0} ON {1} ({2})").format(
            Identifier(f"{self.table}_{column}_idx"), self._ident(), Identifier(column)
        )

    def _write(
        self, statement: Composed | SetWrite, params: list[dict[str, Any]], tracking: Tracking
    ) -> None:
        self._defer(statement, params, tracking, self.notify_statement)

    def _fetch(self, curs: Cursor[DictRow]) -> list[D]:
        """The rows of the statement just executed on `curs`."""
        return [msgspec.json.decode(row["doc"], type=self.row_type) for row in curs.fetchall()]

    def _rows(self, statement: Composed, params: Params = ()) -> list[D]:
        with self._reading() as curs:
            curs.execute(statement, params)
            return self._fetch(curs)

    def _first(self, statement: Composed, params: Params) -> D | None:
        rows = self._rows(statement, params)
        return rows[0] if rows else None

    def _get(self, key: str) -> D | None:
        """The row found by `key`: as this instance wrote it, else as stored."""
        written: D | None = self._written.get(key)
        return written if written is not None else self._first(self.select_one, (key,))

    def _all(self) -> list[D]:
        return self._rows(self.select_all)

    def changed_rows(self, curs: Cursor[DictRow]) -> list[D]:
        """The rows of `select_since`, already executed on `curs` (in a pipeline)."""
        return self._fetch(curs)
