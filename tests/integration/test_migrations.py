"""The schema's migrations: what a fresh database gets, what a database of the previous release
becomes, the views a rebuild creates, and the databases sessiond refuses."""

from __future__ import annotations

import multiprocessing
from typing import Any

import psycopg
import pytest

from application.revocations import REVOCATION_TOPICS
from infra.bootstrap import PROJECTIONS, REBUILDABLE
from infra.postgres.generations import ActiveViews
from infra.postgres.revocations import TRIGGER
from infra.postgres.schema import (
    MIGRATION_TABLE,
    SchemaTooNew,
    applied_migrations,
    migrate,
    migration_ids,
)
from infra.settings import eventsourcing_env
from tests.conftest import view_on
from tests.fixtures import load_previous_release

pytestmark = pytest.mark.postgres


def schema(url: str) -> dict[str, Any]:
    """Everything PostgreSQL knows of the public schema's shape."""
    with psycopg.connect(url) as conn:

        def rows(query: str) -> list[tuple[Any, ...]]:
            return sorted(conn.execute(query).fetchall())

        return {
            "columns": rows(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            ),
            "indexes": rows(
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            ),
            "constraints": rows(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            ),
            "triggers": rows(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
            ),
            "functions": rows(
                "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
                "WHERE pronamespace = 'public'::regnamespace"
            ),
            "types": rows(
                "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace "
                "AND typtype = 'c' AND typrelid NOT IN (SELECT oid FROM pg_class "
                "WHERE relkind IN ('r', 'v', 'S', 'p', 'i'))"
            ),
            "options": rows(
                "SELECT relname, reloptions::text FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            ),
            "tracking": {
                table: rows(f"SELECT * FROM {table} WHERE application_name = '__migration__'")
                for (table,) in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_name LIKE '%\\_tracking'"
                ).fetchall()
            },
        }


def test_a_fresh_database_gets_the_schema_an_upgraded_previous_release_has(
    database_url: str, empty_database_url: str
) -> None:
    load_previous_release(empty_database_url)
    before = schema(empty_database_url)
    assert migrate(empty_database_url) == migration_ids()
    upgraded = schema(empty_database_url)
    fresh = schema(database_url)
    # Check both ways to a current database end in the same schema, yoyo's tables included.
    assert fresh == upgraded
    # Check the migrations changed nothing the previous release had (they only add).
    for part, found in before.items():
        if isinstance(found, list):
            assert set(found) <= set(upgraded[part]), part
    tables = {c[0] for c in fresh["columns"]}
    assert {"sessiond_events", "sessiond_snapshots", "session_status", "api_keys"} <= tables
    assert migrate(database_url) == []  # applied once


def test_the_revocation_trigger_covers_every_revoking_event(database_url: str) -> None:
    """A new revoking event needs a migration that adds its topic to the trigger."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = %s", (TRIGGER,)
        ).fetchone()
    assert row is not None
    definition = row[0]
    assert sorted(t for t in REVOCATION_TOPICS if f"'{t}'" in definition) == sorted(
        REVOCATION_TOPICS
    )
    assert definition.count("sessiond:") == len(REVOCATION_TOPICS)


@pytest.mark.parametrize("name", sorted(REBUILDABLE))
def test_a_rebuilt_generation_gets_the_tables_the_migrations_made(
    database_url: str, name: str
) -> None:
    """A rebuild creates generation N's tables from the view class: they must equal the
    generation-0 tables of the migrations (names aside)."""
    env = eventsourcing_env(database_url)
    view = view_on(env, name, PROJECTIONS[name][1])
    views = ActiveViews(view.datastore, {name: PROJECTIONS[name][1]})
    rebuilt = views.build(name, 1)
    rebuilt.create_table()
    view.datastore.close()
    shape = schema(database_url)

    def of(tables: set[str], suffix: str) -> dict[str, list[tuple[Any, ...]]]:
        def rename(value: Any) -> Any:
            return value.replace(suffix, "") if isinstance(value, str) and suffix else value

        return {
            part: sorted(
                tuple(rename(v) for v in row)
                for row in shape[part]
                if row[0].removeprefix("public.") in tables
            )
            for part in ("columns", "indexes", "constraints", "options")
        }

    gen0 = set(view.tables())
    gen1 = set(rebuilt.tables())
    assert gen0 != gen1
    assert of(gen0, "") == of(gen1, "_g1")
    assert of(gen0, "")["columns"]


def test_a_database_with_a_newer_schema_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f'INSERT INTO "{MIGRATION_TABLE}" (migration_hash, migration_id, applied_at_utc) '
            "VALUES ('f00d', '9999.from-the-future', now())"
        )
    with pytest.raises(SchemaTooNew, match=r"newer than this sessiond knows.*9999\.from"):
        migrate(database_url)
    assert applied_migrations(database_url) == [*migration_ids(), "9999.from-the-future"]


def test_a_lock_left_by_a_migration_that_died_does_not_block_the_next(
    empty_database_url: str,
) -> None:
    """yoyo's lock row outlives a killed process; sessiond's advisory lock does not, and
    under it a row left behind is known to be stale."""
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "CREATE TABLE yoyo_lock (locked int DEFAULT 1, ctime timestamp, pid int NOT NULL, "
            "PRIMARY KEY (locked))"
        )
        conn.execute("INSERT INTO yoyo_lock VALUES (1, now(), 999999)")
    assert migrate(empty_database_url, timeout=5) == migration_ids()


def _migrate_in_a_process(url: str, results: Any) -> None:
    results.put(migrate(url))


def test_processes_migrating_together_apply_each_migration_once(empty_database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_migrate_in_a_process, args=(empty_database_url, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    applied = sorted((results.get(timeout=5) for _ in processes), key=len)
    assert applied == [[], [], [], migration_ids()]
    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM _yoyo_log WHERE operation = 'apply'").fetchone()
    assert row == (len(migration_ids()),)
