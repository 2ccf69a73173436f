"""The database schema: one ordered list of migrations (``migrations/``, applied by yoyo) that
creates every table, applied at start-up by the composition root and by the test fixtures.

Processes that start together on one database take turns: each holds a PostgreSQL advisory
lock while it compares and applies (the lock goes with the connection, so a process killed
half-way holds nothing), and yoyo's own lock row is taken inside it. A migration runs in one
transaction: it is applied whole or not at all. A database whose schema is newer than this
code (a migration it does not know is applied) is refused: `SchemaTooNew`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import DatabaseURI

from infra.postgres.connect import connect, with_liveness

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: yoyo's table of applied migrations (its default name).
MIGRATION_TABLE = "_yoyo_migration"
_LOCK = "sessiond:schema"
#: How long a process waits for another one's migrations before it gives up.
LOCK_TIMEOUT = 120.0


class SchemaError(Exception):
    """The schema cannot be brought to what this code needs."""


class SchemaTooNew(SchemaError):
    """The database holds migrations this code does not know: a newer release made it."""

    def __init__(self, unknown: list[str]) -> None:
        super().__init__(
            "the database's schema is newer than this sessiond knows (unknown migration"
            f"{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}): run a release that "
            "knows it"
        )
        self.unknown = unknown


def migration_ids() -> list[str]:
    """The ids of this code's migrations, in the order they apply."""
    return [m.id for m in read_migrations(str(MIGRATIONS))]


def _backend(database_url: str, application_name: str) -> PostgresqlPsycopgBackend:
    """yoyo's PostgreSQL backend connected with sessiond's connection options (no URL is
    rebuilt: every parameter of `database_url` is passed through as it is)."""
    params: dict[str, Any] = with_liveness(conninfo_to_dict(database_url))
    params["application_name"] = application_name
    dbname = params.pop("dbname", None)
    # The schema eventsourcing's tables live in (its POSTGRES_SCHEMA default).
    params["schema"] = "public"
    uri = DatabaseURI("postgresql+psycopg", None, None, None, None, dbname, params)
    backend = PostgresqlPsycopgBackend(uri, MIGRATION_TABLE)
    backend.init_database()
    return backend


@contextmanager
def schema_lock(
    database_url: str, *, application_name: str = "sessiond-migrate", timeout: float = LOCK_TIMEOUT
) -> Iterator[psycopg.Connection[Any]]:
    """Hold the advisory lock that serialises schema changes across processes (on the
    connection yielded); `SchemaError` if another process holds it for `timeout` seconds."""
    with connect(database_url, autocommit=True, application_name=application_name) as conn:
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_LOCK,)).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() > deadline:
                raise SchemaError(
                    f"another process has been changing the schema for {timeout:g} s; gave up"
                )
            time.sleep(0.1)
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_LOCK,))


def applied_migrations(database_url: str) -> list[str]:
    """The ids of the migrations applied to the database, in the order they were applied."""
    with connect(database_url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATION_TABLE,))
        exists = (found.fetchone() or (False,))[0]
        if not exists:
            return []
        rows = conn.execute(
            f'SELECT migration_id FROM "{MIGRATION_TABLE}" ORDER BY applied_at_utc'  # noqa: S608
        ).fetchall()
    return [str(r[0]) for r in rows]


def migrate(
    database_url: str, *, application_name: str = "sessiond-migrate", timeout: float = LOCK_TIMEOUT
) -> list[str]:
    """Apply the migrations the database lacks, in order, under the schema lock; return their
    ids (none when it is up to date). `SchemaTooNew` for a database a newer release migrated."""
    with schema_lock(database_url, application_name=application_name, timeout=timeout):
        return apply_migrations(database_url, application_name=application_name)


def apply_migrations(database_url: str, *, application_name: str = "sessiond-migrate") -> list[str]:
    """`migrate` for a caller that holds `schema_lock` already."""
    migrations = read_migrations(str(MIGRATIONS))
    known = {m.id for m in migrations}
    backend = _backend(database_url, application_name)
    try:
        # Under the advisory lock no other sessiond migrates: a lock row left in yoyo's
        # table is from a process that died while it held it.
        backend.break_lock()
        hashes = set(backend.get_applied_migration_hashes())
        rows = backend.execute(
            f'SELECT migration_id FROM "{MIGRATION_TABLE}" ORDER BY applied_at_utc'  # noqa: S608
        ).fetchall()
        unknown = [str(r[0]) for r in rows if r[0] not in known]
        if unknown:
            raise SchemaTooNew(unknown)
        todo = [m for m in migrations if m.hash not in hashes]
        if not todo:
            return []
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations))
    finally:
        backend.connection.close()
    applied = [m.id for m in todo]
    log.info("applied the schema migrations %s", ", ".join(applied))
    return applied
