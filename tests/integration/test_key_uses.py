"""When keys were last used is written in one statement per flush, however many keys: a key
whose row a projection batch holds is left for the next flush (never waited for), a key the
view does not have is dropped, and an older use never overwrites a newer one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from eventsourcing.persistence import Tracking

from infra.postgres.keys import PostgresApiKeyView
from infra.settings import eventsourcing_env
from projections.keys import KeyRow
from tests.conftest import view_on

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def keys(database_url: str) -> Iterator[PostgresApiKeyView]:
    view = view_on(eventsourcing_env(database_url), "api_keys", PostgresApiKeyView)
    rows = [
        KeyRow(
            key_id=f"key_{n:03}",
            session_id="sess_a",
            prefix=f"sdk_{n:03}",
            key_hash=f"h{n}",
            label="l",
            created_at=NOW,
        )
        for n in range(300)
    ]
    view.save_keys(rows, Tracking("sessiond", 1))
    yield view
    view.datastore.close()


def last_used(view: PostgresApiKeyView, key_id: str) -> datetime | None:
    (row,) = [k for k in view.keys_of_session("sess_a") if k.key_id == key_id]
    return row.last_used_at


def test_every_use_of_a_flush_is_written_and_a_newer_one_wins(keys: PostgresApiKeyView) -> None:
    uses = {f"key_{n:03}": NOW + timedelta(seconds=n) for n in range(300)}
    assert keys.record_last_use(uses) == {}
    assert last_used(keys, "key_007") == NOW + timedelta(seconds=7)
    assert last_used(keys, "key_299") == NOW + timedelta(seconds=299)
    assert keys.record_last_use({"key_007": NOW}) == {}  # an older use, flushed late
    assert last_used(keys, "key_007") == NOW + timedelta(seconds=7)


def test_a_held_key_is_left_for_later_and_an_unknown_one_is_dropped(
    keys: PostgresApiKeyView, database_url: str
) -> None:
    uses = {"key_001": NOW, "key_002": NOW, "key_gone": NOW}
    with psycopg.connect(database_url) as other:  # a projection batch holding key_002's row
        other.execute(f"SELECT 1 FROM {keys.table} WHERE key_id = 'key_002' FOR UPDATE")
        left = keys.record_last_use(uses)  # does not wait for it
        assert left == {"key_002": NOW}
        assert last_used(keys, "key_001") == NOW
    assert keys.record_last_use(left) == {}  # released: written at the next flush
    assert last_used(keys, "key_002") == NOW
