"""The in-process copy of the views, kept current from PostgreSQL notifications.

Status reads and key checks are served from memory (no database round trip per request).
The copy refreshes when a view writes (``NOTIFY sessiond_views``), when a key is revoked (the
recorder notifies too) and at least every `poll_interval`; each refresh reads, in one
snapshot, the head of the log, the revocations recorded since the last refresh
(`infra.postgres.revocations`), the views' tracking positions and the rows that changed. A key is
accepted only if the key view has it active and no revocation names it or its session: the
revocations are complete up to the head of the log the snapshot saw, whatever the projector
is doing, so revoking never waits for a projection.

Every API process records in ``sessiond_api_instances`` how far its copy has got (`position`
for the views, `revoked_through` for the revocations) and until when it may trust the copy it
holds (`trusted_until`), so a write can wait until *every* live process has it. The trust is
claimed *before* the snapshot is read: a process trusts a snapshot for `stale_after` from the
moment it sent that claim (which precedes the snapshot), and the claim's `trusted_until`
(the database's clock at the claim plus `stale_after` plus a margin) outlasts that trust. A
write that waits for a revocation therefore either sees the process's `revoked_through` reach
it, or sees its `trusted_until` pass, after which the process refuses session keys (503) until
a refresh whose snapshot comes after a newer claim, which the write did not see, so after the
revocation. A process whose last snapshot is older than `stale_after` refuses keys rather
than trust a stale copy, however long the refresh that read it took.

Each refresh also reads which generation of each view is active, in the same snapshot: after a
rebuilt view is switched to, the copy of that view is reloaded whole from the new tables (the
rebuild may have changed rows the log has not touched since) and replaces the old one at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from eventsourcing.postgres import PostgresDatastore
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, tuple_row

from infra.postgres.connect import fetch_one, log_failure, transaction
from infra.postgres.generations import SELECT_GENERATIONS, ActiveViews
from infra.postgres.keys import PostgresApiKeyView
from infra.postgres.listener import ProcessListener
from infra.postgres.revocations import RevocationRow, RevocationTable
from infra.postgres.status import PostgresSessionStatusView
from infra.postgres.views import VIEWS_CHANNEL
from infra.settings import TRUST_MARGIN_SECONDS
from projections.keys import ApiKeyProjection, KeyRow
from projections.readmodels import ReadModels
from projections.status import SessionRow, SessionStatusProjection

log = logging.getLogger(__name__)
APP_NAME = "sessiond"
# ``sessiond_api_instances``: one row per API process (its table: infra/postgres/migrations).
# `trusted_until`: until when that process may still accept keys from the copy it holds or
# is reading (its last claim plus its own SESSIOND_STALE_AFTER, plus a margin), whatever
# other processes use. `seen_at`: when it last finished a refresh.
# A claim lasts TRUST_MARGIN_SECONDS longer than the process's own window: that covers the
# time between the local clock read and the database's `now()` of the claim, and the drift
# between the two clocks.
_CLAIM = (
    "INSERT INTO sessiond_api_instances "
    "(instance_id, position, revoked_through, seen_at, trusted_until) "
    "VALUES (%s, %s, %s, '-infinity', now() + make_interval(secs => %s)) "
    "ON CONFLICT (instance_id) DO UPDATE SET trusted_until = "
    "greatest(sessiond_api_instances.trusted_until, EXCLUDED.trusted_until)"
)
_REFRESHED = (
    "INSERT INTO sessiond_api_instances "
    "(instance_id, position, revoked_through, seen_at, trusted_until) "
    "VALUES (%s, %s, %s, now(), now() + make_interval(secs => %s)) "
    "ON CONFLICT (instance_id) DO UPDATE SET position = EXCLUDED.position, "
    "revoked_through = EXCLUDED.revoked_through, seen_at = EXCLUDED.seen_at, "
    "trusted_until = greatest(sessiond_api_instances.trusted_until, EXCLUDED.trusted_until)"
)
#: The longest a stopping process waits for a connection to remove its row.
STOP_WAIT = 1.0
T = TypeVar("T")
_NO_LIMIT = 2**63 - 1  # the revocations read: up to the head, which the same round trip reads


R = TypeVar("R")


@dataclass
class _ViewRead(Generic[R]):
    """The reads of one view sent in a refresh's pipeline, fetched once it has synced."""

    name: str
    generation: int
    reload: bool  # every row (the copy holds another generation), else the changed ones
    tracking: Cursor[DictRow]
    rows: Cursor[Any]
    fetch: Callable[[Cursor[Any]], list[R]]

    def is_current(self, views: ActiveViews) -> bool:
        return views.generation(self.name) == self.generation

    def read(self) -> _ViewRows[R]:
        row = self.tracking.fetchone()
        return _ViewRows(
            generation=self.generation,
            reload=self.reload,
            position=int(row["max"] or 0) if row else 0,
            rows=self.fetch(self.rows),
        )


@dataclass
class _ViewRows(Generic[R]):
    generation: int
    reload: bool
    position: int
    rows: list[R]


class _Row:
    """A session's row in the copy: its document as read, decoded when first asked for.

    A refresh only places documents (a storm changes thousands of rows a second, and
    decoding them all took most of the refresh's hold on the GIL); a read decodes the one
    it needs, once. The row is set before the document is dropped, and a reader takes the
    document before the row, so whichever thread gets there first, each finds one of them.
    """

    __slots__ = ("document", "position", "row")

    def __init__(self, position: int, document: str) -> None:
        self.position = position
        self.document: str | None = document
        self.row: SessionRow | None = None

    def get(self) -> SessionRow:
        document = self.document
        row = self.row
        if row is None:
            assert document is not None
            row = PostgresSessionStatusView.decode(document)
            self.row = row
            self.document = None
        return row


@dataclass
class _Snapshot:
    """What one refresh read, in one snapshot."""

    head: int
    revocations: list[RevocationRow]
    status: _ViewRows[tuple[str, int, str]]
    keys: _ViewRows[KeyRow]


class CachedReadModels(ReadModels):
    def __init__(
        self,
        database_url: str,
        views: ActiveViews,
        revocations: RevocationTable,
        *,
        poll_interval: float = 1.0,
        stale_after: float = 3.0,
        flush_interval: float = 5.0,
        listener: ProcessListener | None = None,
    ) -> None:
        self.database_url = database_url
        # Woken by the process's listener (one of its own without it: tests).
        self._own_listener = listener is None
        self.listener = listener or ProcessListener(database_url, "sessiond-readmodels")
        self._notified = threading.Event()
        self.views = views
        self.revocations = revocations
        self.datastore: PostgresDatastore = views.datastore
        # The generation each copy was loaded from (-1: not loaded yet).
        self._status_generation = -1
        self._keys_generation = -1
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self.flush_interval = flush_interval
        self.instance_id = uuid.uuid4().hex
        self.position = 0
        self._sessions: dict[str, _Row] = {}
        self._keys: dict[str, KeyRow] = {}
        self._key_ids_by_hash: dict[str, str] = {}
        self._status_pos = 0
        self._keys_pos = 0
        #: Every key id revoked, and every session deleted, up to `revoked_through` (the head
        #: of the log in the last snapshot read): the set only grows.
        self._revoked_keys: set[str] = set()
        self._deleted_sessions: set[str] = set()
        self.revoked_through = 0
        #: The local (monotonic) time from which the copy held is trusted: when the claim that
        #: preceded its snapshot was sent. -inf: trust nothing (not started, or stopped).
        self._trusted_from = -math.inf
        self._claimed_at = -math.inf  # when the last claim that committed was sent
        # A refresh right after the last write of the instance row needs no claim of its own.
        self._claim_reuse = stale_after / 10
        # Guards `_trusted_from` against a refresh that ends after `stop` (held briefly, never
        # across a database wait).
        self._trust_lock = threading.Lock()
        self._stopped = False
        self._uses: dict[str, datetime] = {}
        self._uses_lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._lowest = SharedRead(self._read_lowest)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="readmodels", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh()
        self.listener.listen(VIEWS_CHANNEL, self._on_notify)
        if self._own_listener:
            self.listener.start()
        self._thread.start()

    def _on_notify(self, _: Any) -> None:
        self._notified.set()  # also after the listener (re)connects: nothing may be missed

    def request_stop(self) -> None:
        """Stop refreshing (without waiting: `stop` waits)."""
        self._stopping.set()
        self._notified.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, and say so in ``sessiond_api_instances``, in `timeout` seconds at most: with
        the database away, the row stays and is not waited for once its trust has run out."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._notified.set()
        self._thread.join(timeout)
        self.listener.unlisten(VIEWS_CHANNEL, self._on_notify)
        if self._own_listener:
            self.listener.stop(max(0.0, deadline - time.monotonic()))
        with self._trust_lock:
            # Before the row goes: once writes stop waiting for this process, it accepts
            # no session key (even if a refresh still running ends after this).
            self._stopped = True
            self._trusted_from = -math.inf
        try:
            wait = min(STOP_WAIT, max(0.0, deadline - time.monotonic()))
            with transaction(self.datastore, timeout=wait) as curs:
                curs.execute(
                    "DELETE FROM sessiond_api_instances WHERE instance_id = %s",
                    (self.instance_id,),
                )
        except Exception as error:
            log.warning("could not remove this process from the API instances: %s", error)
            return
        self._flush_uses()  # the database answered just now

    def _listen(self) -> None:
        """Refresh after each notification of the views (or of the listener's return), and
        at least every `poll_interval`."""
        last_flush = time.monotonic()
        while not self._stopping.is_set():
            self._notified.wait(self.poll_interval)
            self._notified.clear()
            if self._stopping.is_set():
                return
            try:
                self.refresh()
                if time.monotonic() - last_flush > self.flush_interval:
                    self._flush_uses()
                    last_flush = time.monotonic()
            except Exception as error:
                log_failure(log, error, "the read models could not refresh", then="again")
                self._stopping.wait(0.5)

    # -- refresh --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the views and revocations afresh (on one thread at a time: `start`, then the
        listener)."""
        if not self._stopped:
            self._refresh()

    def _claim(self) -> float:
        """Claim trust for a snapshot about to be read; return the local time it counts from.

        The claim is the write of this process's row (`trusted_until` pushed to the database's
        `now()` plus the window and margin); the write that ended the last refresh serves when
        it was sent a moment ago."""
        sent = time.monotonic()
        if sent - self._claimed_at <= self._claim_reuse:
            return self._claimed_at
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                _CLAIM,
                (
                    self.instance_id,
                    self.position,
                    self.revoked_through,
                    self.stale_after + TRUST_MARGIN_SECONDS,
                ),
            )
        self._claimed_at = sent
        return sent

    def _refresh(self) -> None:
        trusted_from = self._claim()
        with self.datastore.get_connection() as conn:
            snapshot = self._read(conn)
            self._apply(snapshot)
            with self._trust_lock:
                if self._stopped:
                    return
                self._trusted_from = max(self._trusted_from, trusted_from)
            sent = time.monotonic()
            conn.execute(
                _REFRESHED,
                (
                    self.instance_id,
                    self.position,
                    self.revoked_through,
                    self.stale_after + TRUST_MARGIN_SECONDS,
                ),
            )
            self._claimed_at = sent
        self._wake_waiters()

    def _read(self, conn: Connection[DictRow]) -> _Snapshot:
        """Read one snapshot (REPEATABLE READ): the head of the log, the revocations since the
        last one read, the active generations, and of both views their position and the rows
        changed since the copy's. The statements are pipelined: one round trip, and a second
        only when a view's generation changed (its rows are then read whole from the new
        tables, in the same snapshot). Fewer round trips, fewer wake-ups of this thread that
        each take the GIL from the requests."""
        if not self._views_resolved():
            self.views.resolve()  # a first guess: the snapshot's registry is what counts
        with conn.pipeline(), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            head_read = conn.execute(self.revocations.head)
            since_read = conn.execute(self.revocations.since, (self.revoked_through, _NO_LIMIT))
            generations_read = conn.execute(SELECT_GENERATIONS)
            status = self._send_status(conn)
            keys = self._send_keys(conn)
            row = head_read.fetchone()  # the round trip
            head = int(row["head"] or 0) if row else 0
            revocations = [
                r for r in RevocationTable.rows(since_read.fetchall()) if r.position <= head
            ]
            self.views.follow(generations_read.fetchall())
            # A view switched since the guess: read its new tables (same snapshot).
            status = status if status.is_current(self.views) else self._send_status(conn)
            keys = keys if keys.is_current(self.views) else self._send_keys(conn)
            return _Snapshot(
                head=max(head, self.revoked_through),
                revocations=revocations,
                status=status.read(),
                keys=keys.read(),
            )

    def _views_resolved(self) -> bool:
        try:
            self.views.generation(SessionStatusProjection.name)
            self.views.generation(ApiKeyProjection.name)
        except KeyError:
            return False
        return True

    def _send_status(self, conn: Connection[DictRow]) -> _ViewRead[tuple[str, int, str]]:
        """Its documents are left undecoded (`_Row`)."""
        view = self.views.of(PostgresSessionStatusView)
        return self._send(
            conn,
            SessionStatusProjection.name,
            view.max_tracking_id_statement,
            held=(self._status_generation, self._status_pos),
            send_rows=lambda since: conn.cursor(row_factory=tuple_row).execute(
                view.select_documents_since, (since,)
            ),
            fetch=view.changed_documents,
        )

    def _send_keys(self, conn: Connection[DictRow]) -> _ViewRead[KeyRow]:
        """Its rows decoded: they are few and each is read."""
        view = self.views.of(PostgresApiKeyView)
        return self._send(
            conn,
            ApiKeyProjection.name,
            view.max_tracking_id_statement,
            held=(self._keys_generation, self._keys_pos),
            send_rows=lambda since: conn.execute(view.select_since, (since,)),
            fetch=view.changed_rows,
        )

    def _send(
        self,
        conn: Connection[DictRow],
        name: str,
        max_tracking_id: Any,
        *,
        held: tuple[int, int],
        send_rows: Callable[[int], Cursor[Any]],
        fetch: Callable[[Cursor[Any]], list[R]],
    ) -> _ViewRead[R]:
        """Send the reads of view `name` (its active generation as this process knows it):
        every row when the copy holds another generation than `held` (generation, position),
        else those changed since its position."""
        generation = self.views.generation(name)
        reload = generation != held[0]
        return _ViewRead(
            name=name,
            generation=generation,
            reload=reload,
            tracking=conn.execute(max_tracking_id, (APP_NAME,)),
            rows=send_rows(0 if reload else held[1]),
            fetch=fetch,
        )

    def _apply(self, snapshot: _Snapshot) -> None:
        status, keys = snapshot.status, snapshot.keys
        # Revocations first: a key they name is refused whatever the view says of it.
        self._revoke(snapshot.revocations)
        self.revoked_through = max(self.revoked_through, snapshot.head)
        key_rows = keys.rows
        if status.reload:  # a new generation: its rows replace the old copy's at once
            self._sessions = {sid: _Row(at, doc) for sid, at, doc in status.rows}
            self._status_generation = status.generation
        else:
            for session_id, position, document in status.rows:
                current = self._sessions.get(session_id)
                if current is None or current.position <= position:
                    self._sessions[session_id] = _Row(position, document)
        if keys.reload:
            # The keys first: a lookup through the old hash index finds every key there.
            self._keys = {key.key_id: key for key in key_rows}
            self._key_ids_by_hash = {key.key_hash: key.key_id for key in key_rows}
            self._keys_generation = keys.generation
        else:
            for key in key_rows:
                current_key = self._keys.get(key.key_id)
                if current_key is None or current_key.position <= key.position:
                    self._keys[key.key_id] = key
                    self._key_ids_by_hash[key.key_hash] = key.key_id
        self._status_pos = max(self._status_pos, status.position)
        self._keys_pos = max(self._keys_pos, keys.position)
        self.position = min(self._status_pos, self._keys_pos)

    def _revoke(self, revocations: list[RevocationRow]) -> None:
        # The deletions first: a reader that sees a key refused sees why (`session_deleted`).
        self._deleted_sessions.update(r.session_id for r in revocations if r.session_deleted)
        for revocation in revocations:
            self._revoked_keys.update(revocation.key_ids)

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            ready = [(p, f) for p, f in self._waiters if p <= self.position]
            self._waiters = [(p, f) for p, f in self._waiters if p > self.position]
        for _, future in ready:
            loop = future.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    # -- reads ----------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionRow | None:
        found = self._sessions.get(session_id)
        return None if found is None else found.get()

    def sessions(self) -> list[SessionRow]:
        return [found.get() for found in list(self._sessions.values())]

    def key_by_hash(self, key_hash: str) -> KeyRow | None:
        key_id = self._key_ids_by_hash.get(key_hash)
        return None if key_id is None else self._keys.get(key_id)

    def accepted_key(self, key_hash: str) -> KeyRow | None:
        row = self.key_by_hash(key_hash)
        if (
            row is None
            or not row.is_usable_at(datetime.now(UTC))
            or row.key_id in self._revoked_keys
            or row.session_id in self._deleted_sessions
        ):
            return None
        return row

    def session_deleted(self, session_id: str) -> bool:
        if session_id in self._deleted_sessions:
            return True
        row = self.session(session_id)
        return row is None or row.is_deleted

    def keys_of(self, session_id: str) -> list[KeyRow]:
        self._flush_uses()
        return self.views.of(PostgresApiKeyView).keys_of_session(session_id)

    def note_key_use(self, key_id: str, at: datetime) -> None:
        with self._uses_lock:
            self._uses[key_id] = at

    def _flush_uses(self) -> None:
        with self._uses_lock:
            uses, self._uses = self._uses, {}
        try:
            left = self.views.of(PostgresApiKeyView).record_last_use(uses)
        except Exception:
            log.exception("could not record when keys were last used")
            left = uses
        if left:  # kept for the next flush (newest time wins)
            with self._uses_lock:
                for key_id, at in left.items():
                    self._uses[key_id] = max(at, self._uses.get(key_id, at))

    def is_fresh(self) -> bool:
        return time.monotonic() - self._trusted_from < self.stale_after

    # -- read-your-writes -----------------------------------------------------------------

    async def wait(self, position: int, timeout: float) -> bool:
        if position <= self.position:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            self._waiters.append((position, future))
        if position <= self.position:  # refreshed while the waiter was being added
            self._wake_waiters()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancel (3.11)
                await future
        except TimeoutError:
            return False
        return True

    async def wait_everywhere(self, position: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not await self.wait(position, timeout):
            return False
        # A process that stopped refreshing for longer than it trusts its own copy refuses
        # keys anyway (see `is_fresh`), so it need not be waited for once that time is over.
        return await self._until_everywhere("position", position, deadline)

    async def wait_revoked_everywhere(self, position: int, timeout: float) -> bool:
        # The same, on the revocations: each process's `revoked_through` moves with every
        # refresh it makes, whatever the projector is doing.
        return await self._until_everywhere("revoked", position, time.monotonic() + timeout)

    async def _until_everywhere(self, field: str, position: int, deadline: float) -> bool:
        """Whether every live API process's `field` reached `position` before `deadline`
        (asked at least once). The writes waiting at once share each read of the API
        processes' rows (`_lowest`): one query and one pooled connection for all of them."""
        pause = 0.001
        while True:
            lowest = (await self._lowest.get())[field]
            if lowest is None or lowest >= position:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.02)

    def _read_lowest(self) -> dict[str, int | None]:
        """The lowest `position` and `revoked_through` of the API processes that may still
        accept keys (None: none may)."""
        row = fetch_one(
            self.datastore,
            "SELECT min(position) AS position, min(revoked_through) AS revoked "
            "FROM sessiond_api_instances WHERE trusted_until > now()",
        )
        if row is None:
            return {"position": None, "revoked": None}
        return {"position": row["position"], "revoked": row["revoked"]}

    def live_instances(self) -> int:
        """How many API processes (this one included) share this database right now."""
        row = fetch_one(
            self.datastore,
            "SELECT count(*) AS n FROM sessiond_api_instances WHERE trusted_until > now()",
        )
        return int(row["n"]) if row else 0


class SharedRead(Generic[T]):
    """A blocking read (run in a thread) shared by every caller that asks for it while no
    read has begun yet: each caller gets the result, or the error, of a read that began
    after it asked, and however many ask at once, one read runs at a time per event loop."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._next: asyncio.Future[T] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        pending = self._next
        if pending is None or pending.get_loop() is not loop:
            pending = loop.create_future()
            self._next = pending
            task = loop.create_task(self._run(pending))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await asyncio.shield(pending)

    async def _run(self, pending: asyncio.Future[T]) -> None:
        if self._next is pending:  # from now on, callers wait for the next read
            self._next = None
        try:
            result = await asyncio.to_thread(self._read)
        except Exception as error:
            pending.set_exception(error)
        else:
            pending.set_result(result)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
