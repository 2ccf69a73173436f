"""Behind PgBouncer in transaction mode (Debian's 1.18: no prepared statements of its own),
the pool prepares nothing, or two clients sharing a server connection clash."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.utils import Environment

from infra.postgres.connect import PostgresFactory
from infra.settings import eventsourcing_env
from infra.whatsapp.devicestore import DeviceStorePool

pytestmark = pytest.mark.postgres


@pytest.fixture
def bouncer(database_url: str) -> Iterator[DeviceStorePool]:
    """One server connection for every client: each statement of each client runs there."""
    pool = DeviceStorePool(database_url, size=1, schema="public")
    pool.start()
    yield pool
    pool.close()


def prepare_on_two_clients(url: str, *, prepared: bool) -> None:
    """Two connections of a sessiond pool, each running a statement eventsourcing prepares."""
    env = eventsourcing_env(url, pool_size=2, max_overflow=0, prepared=prepared)
    datastore = PostgresFactory(Environment("", env)).datastore
    datastore.pool.open(wait=True)
    try:
        first, second = datastore.pool.getconn(), datastore.pool.getconn()
        try:
            for conn in (first, second):
                conn.execute("SELECT 1", prepare=True)  # as eventsourcing's recorder does
        finally:
            datastore.pool.putconn(first)
            datastore.pool.putconn(second)
    finally:
        datastore.close()


def test_a_pool_behind_a_transaction_pooler_prepares_no_statement(
    bouncer: DeviceStorePool,
) -> None:
    # Check what goes wrong with prepared statements: the second client's is already there.
    with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
        prepare_on_two_clients(bouncer.conninfo(), prepared=True)

    # Check sessiond's pools (no statement prepared) do not.
    prepare_on_two_clients(bouncer.conninfo(), prepared=False)
