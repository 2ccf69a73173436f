"""Shared fixtures: a PostgreSQL server (the CI one, or an embedded one) and fresh databases."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.postgres.schema import migrate
from infra.settings import Settings
from tests.receiver import Receiver, receiver

ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture(scope="session")
def pg_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SESSIOND_TEST_DATABASE_URL when set (CI), else an embedded server for this run."""
    url = os.environ.get("SESSIOND_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from infra.postgres.embedded import start_embedded_postgres

    # Its INFO lines come from its own threads as the run ends, after pytest has closed the
    # stream they would go to ("Logging error ... I/O operation on closed file").
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    url, server = start_embedded_postgres(tmp_path_factory.mktemp("embedded"))
    yield url
    del server


@pytest.fixture
def hook() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 whose answers a test scripts."""
    with receiver() as running:
        yield running


@pytest.fixture
def database_url(pg_base_url: str) -> Iterator[str]:
    """A new database for one test, its schema migrated as sessiond's start-up does; dropped
    afterwards."""
    url = empty_database(pg_base_url)
    try:
        migrate(url)
        yield url
    finally:  # also when the migration fails: no database is left behind
        drop_database(pg_base_url, url)


@pytest.fixture
def empty_database_url(pg_base_url: str) -> Iterator[str]:
    """A new database with no table at all, dropped afterwards."""
    url = empty_database(pg_base_url)
    try:
        yield url
    finally:
        drop_database(pg_base_url, url)


def empty_database(pg_base_url: str) -> str:
    name = "sessiond_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(pg_base_url, dbname=name)


def drop_database(pg_base_url: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_settings(data_dir: Path, database_url: str, **overrides: str) -> Settings:
    env = {
        "SESSIOND_DATA_DIR": str(data_dir),
        "SESSIOND_DATABASE_URL": database_url,
        "SESSIOND_ADMIN_KEY": ADMIN_KEY,
        "SESSIOND_QR_FIRST_TIMEOUT": "60",
        "SESSIOND_QR_NEXT_TIMEOUT": "20",
        "SESSIOND_POLL_INTERVAL": "0.2",
        "SESSIOND_GATEWAY": "simulator",
        # Tests never reach beyond this host: webhooks go to private addresses only.
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "only",
        "SESSIOND_WORKER_TICK": "0.2",
        "SESSIOND_LEASE_TTL": "5",
        **overrides,
    }
    return Settings.from_env(env)


test_settings.__test__ = False  # type: ignore[attr-defined]


def view_on(env: dict[str, str], name: str, view_class: type[Any]) -> Any:
    """A view of projection `name` with its own pool, built as the projection runner builds it."""
    factory = InfrastructureFactory[Any].construct(env=Environment(name, env))
    return factory.tracking_recorder(view_class)
