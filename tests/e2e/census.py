"""Who holds PostgreSQL's connections: sessiond's processes by their application names, counted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import psycopg
from psycopg.conninfo import conninfo_to_dict

from infra.postgres.gateway import WORKER_APP_PREFIX
from tests.waiting import eventually

#: Idle (an idle API process's readers hold no connection).
BUDGETS = {"serve": 12, "api": 4, "projector": 8, "worker": 6}
#: Busy: the API process's 2 reader processes (`sessiond-<role>:reader`) connect for the
#: expensive reads, one connection each, and close it once unused for a while.
READERS = 2
BUSY_BUDGETS = {**BUDGETS, "serve": 12 + READERS, "api": 4 + READERS}


SERVE_NAMES = ("sessiond-serve", "sessiond-worker")


#: The test's own connections (left out of every count).
OURS = "budget-test"

#: Every projection's advisory lock, held once the projector runs them all.
PROJECTIONS = 6


#: The clients' connections to one database by application name, but for the census's own.
#: Client backends only: an autovacuum worker on that database (no application name) is not
#: one of sessiond's connections.
COUNT_BY_NAME = (
    "SELECT application_name, count(*) FROM pg_stat_activity "
    "WHERE datname = %s AND application_name <> %s AND backend_type = 'client backend' "
    "GROUP BY 1"
)


def label(application_name: str) -> str:
    """The process a connection belongs to (``sessiond-api``) and what it is for."""
    return application_name.split(":", 1)[0]


def purpose(application_name: str) -> str:
    name, _, rest = application_name.partition(":")
    if name == "sessiond-worker" and rest not in ("pool", "boot"):
        return "sessiond-worker:listener"  # the worker's identity: its one listener
    return application_name


def session_bound(application_name: str) -> bool:
    """Whether a connection so named is a direct one: a listener, the worker's identity, a
    process's start-up."""
    process, _, rest = application_name.partition(":")
    return rest in ("listener", "boot") or (process == "sessiond-worker" and rest != "pool")


class Census:
    """Counts the connections to one database, by process, again and again on a thread:
    `peak` is the most each process ever held while it ran."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.dbname = str(conninfo_to_dict(database_url)["dbname"])
        self.peak: Counter[str] = Counter()
        self.peak_total = 0
        self.peak_pooled = 0  # the most pooled connections (not `session_bound`) at once
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> Counter[str]:
        """The connections held right now, by purpose (each one's application name)."""
        with psycopg.connect(self.database_url, autocommit=True, application_name=OURS) as conn:
            rows = conn.execute(
                COUNT_BY_NAME,
                (self.dbname, OURS),
            ).fetchall()
        return Counter({purpose(name): int(n) for name, n in rows})

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True, application_name=OURS) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    COUNT_BY_NAME,
                    (self.dbname, OURS),
                ).fetchall()
                by_process: Counter[str] = Counter()
                for name, n in rows:
                    by_process[label(name)] += int(n)
                for process, n in by_process.items():
                    self.peak[process] = max(self.peak[process], n)
                self.peak_total = max(self.peak_total, sum(by_process.values()))
                pooled = sum(int(n) for name, n in rows if not session_bound(name))
                self.peak_pooled = max(self.peak_pooled, pooled)
                self.samples += 1
                self._stop.wait(0.02)

    @contextmanager
    def watching(self) -> Iterator[Census]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def by_process(counts: Counter[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for name, n in counts.items():
        found[label(name)] += n
    return found


#: Processes start and settle slowly on a busy machine.
wait_for = partial(eventually, timeout=60.0)


def settled(database_url: str, workers: int = 1) -> Callable[[], bool]:
    """Every projection elected, every worker alive (its identity connection up) and every
    process started (none holds its start-up connection)."""

    def check() -> bool:
        with psycopg.connect(database_url, autocommit=True, application_name=OURS) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
                " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE %s AND application_name NOT IN (%s, %s)),"
                " (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE '%%:boot')",
                (WORKER_APP_PREFIX + "%", WORKER_APP_PREFIX + "pool", WORKER_APP_PREFIX + "boot"),
            ).fetchone()
        assert row is not None
        return int(row[0]) >= PROJECTIONS and int(row[1]) >= workers and int(row[2]) == 0

    return check
