"""The in-process copy of the views, kept current from PostgreSQL notifications.

Status reads and key checks are served from memory (no database round trip per request).
The copy refreshes when a view writes (``NOTIFY sessiond_views``) and at least every
`poll_interval`; each refresh reads the views' tracking positions and the rows that changed
since the last refresh in one snapshot. Every API process records how far its copy has got in
``sessiond_api_instances``, so a revocation can wait until *every* live process has seen it.
A process whose copy is older than `stale_after` refuses keys rather than trust a stale copy.
Each refresh also reads which generation of each view is active, in the same snapshot: after a
rebuilt view is switched to, the copy of that view is reloaded whole from the new tables (the
rebuild may have changed rows the log has not touched since) and replaces the old one at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from eventsourcing.postgres import PostgresDatastore

from infra.generations import ActiveViews
from infra.pgconnect import connect, transaction, unreachable
from infra.pgviews import VIEWS_CHANNEL, PostgresApiKeyView, PostgresSessionStatusView
from projections.keys import ApiKeyProjection
from projections.readmodels import ReadModels
from projections.rows import KeyRow, SessionRow
from projections.status import SessionStatusProjection

log = logging.getLogger(__name__)
APP_NAME = "sessiond"
# `trusted_until`: until when that process may still accept keys from its copy (its own
# refresh time plus its own SESSIOND_STALE_AFTER, plus a margin), whatever other processes use.
INSTANCES_DDL = (
    "CREATE TABLE IF NOT EXISTS sessiond_api_instances ("
    "instance_id text PRIMARY KEY, position bigint NOT NULL, seen_at timestamptz NOT NULL, "
    "trusted_until timestamptz NOT NULL)"
)
INSTANCES_MIGRATION = (  # for databases made before `trusted_until` existed
    "ALTER TABLE sessiond_api_instances "
    "ADD COLUMN IF NOT EXISTS trusted_until timestamptz NOT NULL DEFAULT now()"
)
TRUST_MARGIN_SECONDS = 1.0
#: The longest a stopping process waits for a connection to remove its row.
STOP_WAIT = 1.0


class CachedReadModels(ReadModels):
    def __init__(
        self,
        database_url: str,
        views: ActiveViews,
        *,
        poll_interval: float = 1.0,
        stale_after: float = 3.0,
        flush_interval: float = 5.0,
    ) -> None:
        self.database_url = database_url
        self.views = views
        self.datastore: PostgresDatastore = views.datastore
        # The generation each copy was loaded from (-1: not loaded yet).
        self._status_generation = -1
        self._keys_generation = -1
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self.flush_interval = flush_interval
        self.instance_id = uuid.uuid4().hex
        self.position = 0
        self._sessions: dict[str, SessionRow] = {}
        self._keys: dict[str, KeyRow] = {}
        self._key_ids_by_hash: dict[str, str] = {}
        self._status_pos = 0
        self._keys_pos = 0
        self._refreshed_at = 0.0
        self._uses: dict[str, datetime] = {}
        self._uses_lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="readmodels", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def request_stop(self) -> None:
        """Stop refreshing (without waiting: `stop` waits)."""
        self._stopping.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, and say so in ``sessiond_api_instances``, in `timeout` seconds at most: with
        the database away, the row stays and is not waited for once its trust has run out."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._thread.join(timeout)
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
        last_flush = time.monotonic()
        while not self._stopping.is_set():
            try:
                with connect(self.database_url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {VIEWS_CHANNEL}")
                    self.refresh()  # nothing written before LISTEN may be missed
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                            break
                        self.refresh()
                        if time.monotonic() - last_flush > self.flush_interval:
                            self._flush_uses()
                            last_flush = time.monotonic()
            except Exception as error:
                if unreachable(error):
                    log.warning("the read-model listener lost the database (%s); again", error)
                else:
                    log.exception("the read-model listener failed; reconnecting")
                self._stopping.wait(0.5)

    # -- refresh --------------------------------------------------------------------------

    @property
    def status_view(self) -> PostgresSessionStatusView:
        view: PostgresSessionStatusView = self.views.get(SessionStatusProjection.name)
        return view

    @property
    def key_view(self) -> PostgresApiKeyView:
        view: PostgresApiKeyView = self.views.get(ApiKeyProjection.name)
        return view

    def refresh(self) -> None:
        with self.datastore.get_connection() as conn:
            with conn.transaction(), conn.cursor() as curs:
                curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                self.views.resolve(curs)
                status_view, key_view = self.status_view, self.key_view
                status_generation = self.views.generation(SessionStatusProjection.name)
                keys_generation = self.views.generation(ApiKeyProjection.name)
                reload_status = status_generation != self._status_generation
                reload_keys = keys_generation != self._keys_generation
                status_pos = self._tracking(curs, status_view)
                keys_pos = self._tracking(curs, key_view)
                sessions = status_view.changed_since(curs, 0 if reload_status else self._status_pos)
                keys = key_view.changed_since(curs, 0 if reload_keys else self._keys_pos)
            if reload_status:  # a new generation: its rows replace the old copy's at once
                self._sessions = {row.session_id: row for row in sessions}
                self._status_generation = status_generation
            if reload_keys:
                # The keys first: a lookup through the old hash index finds every key there.
                self._keys = {key.key_id: key for key in keys}
                self._key_ids_by_hash = {key.key_hash: key.key_id for key in keys}
                self._keys_generation = keys_generation
            for row in [] if reload_status else sessions:
                current = self._sessions.get(row.session_id)
                if current is None or current.position <= row.position:
                    self._sessions[row.session_id] = row
            for key in [] if reload_keys else keys:
                current_key = self._keys.get(key.key_id)
                if current_key is None or current_key.position <= key.position:
                    self._keys[key.key_id] = key
                    self._key_ids_by_hash[key.key_hash] = key.key_id
            self._status_pos = max(self._status_pos, status_pos)
            self._keys_pos = max(self._keys_pos, keys_pos)
            self.position = min(self._status_pos, self._keys_pos)
            conn.execute(
                "INSERT INTO sessiond_api_instances VALUES "
                "(%s, %s, now(), now() + make_interval(secs => %s)) "
                "ON CONFLICT (instance_id) DO UPDATE SET position = EXCLUDED.position, "
                "seen_at = EXCLUDED.seen_at, trusted_until = EXCLUDED.trusted_until",
                (self.instance_id, self.position, self.stale_after + TRUST_MARGIN_SECONDS),
            )
        self._refreshed_at = time.monotonic()
        self._wake_waiters()

    @staticmethod
    def _tracking(curs: Any, view: PostgresSessionStatusView | PostgresApiKeyView) -> int:
        curs.execute(view.max_tracking_id_statement, (APP_NAME,))
        row = curs.fetchone()
        return int(row["max"] or 0) if row else 0

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
        return self._sessions.get(session_id)

    def sessions(self) -> list[SessionRow]:
        return list(self._sessions.values())

    def key_by_hash(self, key_hash: str) -> KeyRow | None:
        key_id = self._key_ids_by_hash.get(key_hash)
        return None if key_id is None else self._keys.get(key_id)

    def keys_of(self, session_id: str) -> list[KeyRow]:
        self._flush_uses()
        return self.key_view.keys_of_session(session_id)

    def note_key_use(self, key_id: str, at: datetime) -> None:
        with self._uses_lock:
            self._uses[key_id] = at

    def _flush_uses(self) -> None:
        with self._uses_lock:
            uses, self._uses = self._uses, {}
        try:
            left = self.key_view.record_last_use(uses)
        except Exception:
            log.exception("could not record when keys were last used")
            left = uses
        if left:  # kept for the next flush (newest time wins)
            with self._uses_lock:
                for key_id, at in left.items():
                    self._uses[key_id] = max(at, self._uses.get(key_id, at))

    def is_fresh(self) -> bool:
        return time.monotonic() - self._refreshed_at < self.stale_after

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
        pause = 0.001
        while time.monotonic() < deadline:
            lagging = await asyncio.to_thread(self._count_lagging, position)
            if lagging == 0:
                return True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        return False

    def _count_lagging(self, position: int) -> int:
        with self.datastore.cursor() as curs:
            curs.execute(
                "SELECT count(*) AS n FROM sessiond_api_instances "
                "WHERE position < %s AND trusted_until > now()",
                (position,),
            )
            row = curs.fetchone()
        return int(row["n"]) if row else 0


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
