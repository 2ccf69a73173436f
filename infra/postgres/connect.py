"""How sessiond connects to PostgreSQL, so that no wait on a server that is gone lasts for ever.

- Every connection, direct or pooled, gives up connecting after `CONNECT_TIMEOUT` and notices
  a peer that went away without a word (a partition, a host that died) through TCP keepalives
  and a user timeout, instead of waiting for the kernel's retransmissions (a quarter of an hour).
  A server that is stopped or ends a session closes the socket: that is seen at once anyway.
- A pool hands a connection out within its timeout (``POSTGRES_CONNECT_TIMEOUT``) or raises.
  After an outage it retries at most `RECONNECT_WINDOW` apart (psycopg_pool backs off to minutes
  by default), so a process is back within seconds of the database.
- `transaction` runs a statement with a short wait of its own: what a stopping process still
  tells the database (leases it gives up, the rows it leaves) is worth a second, not the stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from eventsourcing import persistence, postgres
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.utils import Environment, EnvType
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

CONNECT_TIMEOUT = 5
#: Seconds a pool keeps retrying one lost connection before it lets the slot go (a later
#: request grows the pool again, with a fresh attempt): the longest pause between retries.
RECONNECT_WINDOW = 5.0
#: libpq options of every connection; a URL that sets one of them keeps its own value.
LIVENESS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: unacknowledged data for this long means a dead peer
}


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the database is away (it cannot be reached, a connection broke, or
    none came in time): an outage, logged in one line, not a bug with its traceback."""
    return isinstance(
        error,
        psycopg.OperationalError  # PoolTimeout and PoolClosed too
        | psycopg.InterfaceError
        | persistence.OperationalError
        | persistence.InterfaceError,
    )


def log_failure(
    logger: logging.Logger, error: BaseException, what: str, *args: object, then: str = ""
) -> None:
    """Log a failure that the loop around it survives (`what`, then what it does next): one
    line with the error while the database is away (it comes back by itself), the traceback
    otherwise (a bug to look at)."""
    tail = f"; {then}" if then else ""
    if unreachable(error):
        logger.warning(what + " (%s)" + tail, *args, error)
    else:
        logger.exception(what + tail, *args)


def with_liveness(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the `LIVENESS` options it does not set itself."""
    return {**LIVENESS, **params}


def connect(database_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A direct connection (a listener, a lock, an identity) with the `LIVENESS` options."""
    return psycopg.connect(**{**with_liveness(conninfo_to_dict(database_url)), **kwargs})


@contextmanager
def transaction(
    datastore: PostgresDatastore, *, timeout: float
) -> Iterator[psycopg.Cursor[DictRow]]:
    """A transaction on one of `datastore`'s connections, waiting at most `timeout` seconds
    for it (`psycopg_pool.PoolTimeout` after that, `PoolClosed` once the pool is closed)."""
    with (
        datastore.pool.connection(timeout=max(timeout, 0.01)) as conn,
        conn.transaction(),
        conn.cursor(row_factory=dict_row) as curs,
    ):
        yield curs


def fetch_one(datastore: PostgresDatastore, query: Any, params: Any = None) -> DictRow | None:
    """The first row a read answers (None: no row), on a pooled connection of its own."""
    with datastore.cursor() as curs:
        curs.execute(query, params)
        return curs.fetchone()


def fetch_all(datastore: PostgresDatastore, query: Any, params: Any = None) -> list[DictRow]:
    """Every row a read answers, on a pooled connection of its own."""
    with datastore.cursor() as curs:
        curs.execute(query, params)
        return curs.fetchall()


def returns_row(datastore: PostgresDatastore, statement: Any, params: Any = None) -> bool:
    """Whether a write (committed in a transaction of its own) answered a row: whether its
    ``RETURNING`` found something written."""
    with datastore.transaction(commit=True) as curs:
        curs.execute(statement, params)
        return curs.fetchone() is not None


class PostgresFactory(postgres.PostgresFactory):
    """eventsourcing's PostgreSQL persistence, with pools that connect as `connect` does and
    retry a lost connection at most `RECONNECT_WINDOW` apart; their connections are named
    ``POSTGRES_APPLICATION_NAME`` and prepare no statement when ``POSTGRES_PREPARED_STATEMENTS``
    is ``n`` (`infra.settings.eventsourcing_env` says why)."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        assert isinstance(pool.kwargs, dict)
        for name, value in LIVENESS.items():
            pool.kwargs.setdefault(name, value)
        application_name = self.env.get("POSTGRES_APPLICATION_NAME")
        if application_name:
            pool.kwargs["application_name"] = application_name
        if self.env.get("POSTGRES_PREPARED_STATEMENTS", "y").lower() == "n":
            pool.kwargs["prepare_threshold"] = None  # even eventsourcing's prepare=True
        pool.reconnect_timeout = RECONNECT_WINDOW
        max_idle = self.env.get("POSTGRES_MAX_IDLE")
        if max_idle:  # a connection above the pool's minimum closes once unused this long
            pool.max_idle = float(max_idle)
