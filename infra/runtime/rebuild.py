"""`sessiond projections rebuild <name>`: a fresh copy of a view, switched to with no downtime.

1. **Build.** Generation N+1 of the view (tables suffixed ``_g{N+1}``, see
   `infra/postgres/generations.py`) is filled from the start of the log in this process while
   generation N keeps serving: the first pass keeps the rows in memory and copies each into
   the empty tables once (`BatchingView.bulk`); then it catches up with the head, a
   transaction per page, again while a pass has more than a page to apply.
2. **Handover.** The rebuild waits for the projection's advisory lock (``pg_advisory_lock``)
   and announces it on ``sessiond_generations``. The supervisor that runs the projection
   sees a session waiting for its lock, stops its runner after the page it is applying and
   lets the lock go (`ProjectionSupervisor._handover_wanted`); PostgreSQL hands the lock to
   the waiting rebuild, not to a standby. From here the view does not move until the switch:
   writes wait for their read-your-writes a moment longer, reads go on.
3. **Switch.** Holding the lock, the rebuild catches up to the head (nothing else writes the
   view now, so the new copy is at least as far as the old one), then in one transaction
   records generation N+1 in ``sessiond_view_generations`` and notifies. API processes read
   the registry in each refresh's snapshot and reload their copy of the view from the new
   tables; the supervisor elected next runs generation N+1 from where the rebuild stopped.
4. **Retire.** Once every live API process has refreshed twice since the switch (so each has
   re-read the registry in a snapshot taken after it), what no event holds is carried over
   (the last use of API keys) and generation N's tables are dropped, or kept with
   ``--keep-old``.

If anything fails before the switch, the new tables are dropped and the old generation is
untouched; a rebuild killed half-way leaves tables that the next rebuild drops first.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.persistence import Tracking
from psycopg.rows import DictRow, dict_row
from psycopg.sql import SQL, Identifier
from tqdm import tqdm

from infra.bootstrap import NOT_REBUILDABLE, PROJECTIONS, REBUILDABLE, Container
from infra.postgres.connect import connect
from infra.postgres.generations import GENERATIONS_CHANNEL, active_generation
from infra.postgres.keys import PostgresApiKeyView
from infra.postgres.views import VIEWS_CHANNEL
from infra.runtime.supervisor import lock_key
from infra.settings import Settings

#: Events applied per transaction while building (the page is also what is read at once).
DEFAULT_PAGE_SIZE = 5000


class RebuildError(Exception):
    """The rebuild could not be done; the message says why. The old view still serves."""


def check_rebuildable(name: str | None) -> str:
    """`name` if it is a view that can be rebuilt; else `RebuildError` saying which are."""
    choices = ", ".join(sorted(REBUILDABLE))
    if not name:
        raise RebuildError(f"say which view to rebuild: {choices}")
    if name in NOT_REBUILDABLE:
        raise RebuildError(f"the {name} view cannot be rebuilt: {NOT_REBUILDABLE[name]}")
    if name not in REBUILDABLE:
        raise RebuildError(
            f"there is no view named {name!r}; the views that can be rebuilt: {choices}"
        )
    return name


@dataclass
class RebuildReport:
    name: str
    generation: int
    position: int = 0
    events: int = 0
    build_seconds: float = 0.0
    handover_seconds: float = 0.0  # from asking for the lock to the switch's commit
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


class ViewRebuild:
    """Rebuild the view of projection `name` into a new generation and switch to it."""

    def __init__(
        self,
        container: Container,
        name: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        switch_timeout: float = 30.0,
        retire_timeout: float = 30.0,
        keep_old: bool = False,
        progress: bool = True,
    ) -> None:
        if page_size < 1 or switch_timeout <= 0 or retire_timeout <= 0:
            raise RebuildError("the page size and the timeouts must be positive")
        self.container = container
        self.name = check_rebuildable(name)
        self.projection_class, _ = PROJECTIONS[name]
        self.page_size = page_size
        self.switch_timeout = switch_timeout
        self.retire_timeout = retire_timeout
        self.keep_old = keep_old
        self.show_progress = progress
        self.app = container.app
        self.datastore = container.views.datastore
        self.old_generation = 0
        self.report = RebuildReport(name, 0)
        self.view: Any = None
        self.projection: Any = None
        self.switched = False
        self._progress: Any = None

    # -- the whole rebuild ------------------------------------------------------------------

    def run(self) -> RebuildReport:
        with self._only_rebuild():
            self.prepare()
            try:
                self.build()
                self.switch()
            except BaseException:
                if not self.switched and self._still_old():
                    self._drop(self.view.tables())
                raise
            finally:
                self._progress.close()
            self.retire()
        return self.report

    def _still_old(self) -> bool:
        """Whether the old generation is known to be active still (a switch whose commit
        failed may have happened: its tables are then kept, whatever the error)."""
        try:
            with connect(self.container.direct_url, autocommit=True) as conn:
                return active_generation(conn, self.name) == self.old_generation
        except psycopg.Error:
            return False

    @contextmanager
    def _only_rebuild(self) -> Iterator[None]:
        """One rebuild of a view at a time (a second one is refused, not queued)."""
        with connect(self.container.direct_url, autocommit=True) as conn:
            key = lock_key(self.name) + ":rebuild"
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            if not (row and row[0]):
                raise RebuildError(f"a rebuild of {self.name} is already running")
            try:
                yield
            finally:  # at once: a closed connection's locks go only when its backend has ended
                with suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def prepare(self) -> None:
        """Create the new generation's tables (dropping leftovers of an interrupted rebuild)."""
        with connect(self.container.direct_url, autocommit=True) as conn:
            self.old_generation = active_generation(conn, self.name)
        generation = self.old_generation + 1
        self.report = RebuildReport(self.name, generation)
        self.view = self.container.views.build(self.name, generation)
        self._drop(self.view.tables())
        self.view.create_table()
        self.projection = self.projection_class(view=self.view)
        head = self.app.recorder.max_notification_id() or 0
        self._progress = tqdm(
            total=head,
            unit="event",
            desc=f"{self.name} → generation {generation}",
            file=sys.stderr,
            delay=0.5,
            disable=not self.show_progress,
        )

    # -- 1. build ---------------------------------------------------------------------------

    def build(self) -> None:
        """Apply the log from the start (a bulk load of the empty tables), then catch up
        with the head again while a pass has more than a page to apply: what is left for
        the switch, while the view stands still, is then at most about a page."""
        started = time.monotonic()
        with self.view.bulk():
            self._catch_up(bulk=True)
        while self._catch_up() > self.page_size:
            pass
        self.report.build_seconds = time.monotonic() - started

    def _catch_up(self, *, bulk: bool = False) -> int:
        """Apply the events after the new view's position up to the head of the log as it
        is now (events keep coming: a pass must end), a page at a time, in a bulk or in a
        transaction per page; return how many were applied."""
        recorder, mapper, app_name = self.app.recorder, self.app.mapper, self.app.name
        process_event, topics = self.projection.process_event, self.projection.topics
        head = recorder.max_notification_id() or 0
        applied = 0
        position = self.report.position
        while position < head:
            notifications = recorder.select_notifications(
                position, self.page_size, head, topics, inclusive_of_start=False
            )
            if not notifications:
                break
            with nullcontext() if bulk else self.view.batch():
                for notification in notifications:
                    process_event(
                        mapper.to_domain_event(notification), Tracking(app_name, notification.id)
                    )
            if bulk:
                self.view.end_page()
            last = notifications[-1].id
            self._progress.total = max(self._progress.total, head)
            self._progress.update(last - position)
            position = self.report.position = last
            applied += len(notifications)
            self.report.events += len(notifications)
        return applied

    # -- 2. and 3. handover and switch ------------------------------------------------------

    def switch(self) -> None:
        """Take the projection's lock from its runner, catch up, make the new view active."""
        started = time.monotonic()
        url = self.container.direct_url
        with connect(url, autocommit=True, row_factory=dict_row) as lock_conn:
            lock_conn.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (f"{int(self.switch_timeout * 1000)}ms",),
            )
            announced = threading.Event()
            announcer = threading.Thread(
                target=self._announce_when_waiting,
                args=(lock_conn.info.backend_pid, announced),
                daemon=True,
            )
            announcer.start()
            try:
                lock_conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock_key(self.name),))
            except psycopg.errors.LockNotAvailable:
                raise RebuildError(
                    f"the process running the {self.name} projection did not hand it over "
                    f"within {self.switch_timeout:g} s; nothing was switched"
                ) from None
            finally:
                announced.set()
                announcer.join()
            self._final_catch_up()
            with lock_conn.transaction(), lock_conn.cursor() as curs:
                curs.execute(
                    "INSERT INTO sessiond_view_generations (name, generation) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET generation = EXCLUDED.generation, "
                    "switched_at = now()",
                    (self.name, self.report.generation),
                )
                self._carry_over(curs)
                curs.execute("SELECT pg_notify(%s, %s)", (VIEWS_CHANNEL, self.name))
            self.switched = True
            # Let the lock go, then wake the supervisors: one of them runs the new generation.
            lock_conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock_key(self.name),))
            lock_conn.execute("SELECT pg_notify(%s, %s)", (GENERATIONS_CHANNEL, self.name))
        self.report.handover_seconds = time.monotonic() - started

    def _final_catch_up(self) -> None:
        """Catch up while holding the lock: nothing else writes the view now, so the new
        view ends at least as far as the old one."""
        head = self.app.recorder.max_notification_id() or 0
        self._catch_up()
        if not self.projection.topics and self.report.position < head:
            raise RebuildError(
                f"the new view stopped at position {self.report.position}, before the head "
                f"({head}); nothing was switched"
            )

    def _announce_when_waiting(self, pid: int, done: threading.Event) -> None:
        """Notify the supervisors once the session `pid` waits for the lock: the leader
        then hands over at once instead of at its next check."""
        with connect(self.container.direct_url, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)", (pid,)
                ).fetchone()
                if row and row[0]:
                    conn.execute("SELECT pg_notify(%s, %s)", (GENERATIONS_CHANNEL, self.name))
                    return
                done.wait(0.01)

    def _carry_over(self, curs: psycopg.Cursor[DictRow]) -> None:
        """Copy what the old view holds that no event does (API keys' last use)."""
        if isinstance(self.view, PostgresApiKeyView):
            old = self.container.views.build(self.name, self.old_generation)
            self.view.carry_over_last_use(curs, old)

    # -- 4. retire the old generation -------------------------------------------------------

    def retire(self) -> None:
        """Once no API process reads the old generation, carry over again and drop it."""
        old = self.container.views.build(self.name, self.old_generation)
        tables: list[str] = old.tables()
        if not self._wait_for_readers():
            print(
                f"sessiond: some API process did not refresh within {self.retire_timeout:g} s; "
                f"the old tables are kept: {', '.join(tables)}",
                file=sys.stderr,
            )
            self.report.kept = tables
            return
        try:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("SET LOCAL lock_timeout = '5s'")
                self._carry_over(curs)
                if not self.keep_old:
                    self._drop_on(curs, tables)
        except psycopg.errors.LockNotAvailable:
            print(
                f"sessiond: the old tables are still in use; they are kept: {', '.join(tables)}",
                file=sys.stderr,
            )
            self.report.kept = tables
            return
        if self.keep_old:
            self.report.kept = tables
        else:
            self.report.dropped = tables

    def _wait_for_readers(self) -> bool:
        """Wait until every live API process has refreshed twice since now (the switch)."""
        deadline = time.monotonic() + self.retire_timeout
        with connect(self.container.direct_url, autocommit=True) as conn:
            for _ in range(2):
                since = conn.execute("SELECT now()").fetchone()
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM sessiond_api_instances "
                        "WHERE trusted_until > now() AND seen_at <= %s",
                        (since[0] if since else None,),
                    ).fetchone()
                    if row is not None and row[0] == 0:
                        break
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.02)
        return True

    def _drop(self, tables: list[str]) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self._drop_on(curs, tables)

    def _drop_on(self, curs: psycopg.Cursor[DictRow], tables: list[str]) -> None:
        for table in tables:
            curs.execute(
                SQL("DROP TABLE IF EXISTS {0}.{1}").format(
                    Identifier(self.datastore.schema), Identifier(table)
                )
            )


def rebuild_command(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """`sessiond projections rebuild <name>`: 0 once switched, 2 for a wrong name, 1 if the
    rebuild failed (the old view then still serves)."""
    try:
        name = check_rebuildable(args.name)
    except RebuildError as error:
        print(f"sessiond: {error}", file=sys.stderr)
        return 2
    container = Container(settings, url, frozenset())
    try:
        rebuild = ViewRebuild(
            container,
            name,
            page_size=args.page_size,
            switch_timeout=args.switch_timeout,
            keep_old=args.keep_old,
        )
        report = rebuild.run()
    except RebuildError as error:
        print(f"sessiond: {error}", file=sys.stderr)
        return 1
    finally:
        container.close()
    rate = report.events / report.build_seconds if report.build_seconds else 0.0
    print(
        f"{name}: rebuilt from {report.events:,} events in {report.build_seconds:.1f} s "
        f"({rate:,.0f} events/s) as generation {report.generation}, at position "
        f"{report.position}; switched in {report.handover_seconds:.2f} s"
    )
    if report.dropped:
        print(f"{name}: dropped the previous generation: {', '.join(report.dropped)}")
    if report.kept:
        print(f"{name}: kept the previous generation: {', '.join(report.kept)}")
    return 0
