"""One read-model test, run against the in-memory and the PostgreSQL views."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from eventsourcing.persistence import Tracking

from infra.postgres.keys import PostgresApiKeyView
from infra.postgres.status import PostgresSessionStatusView
from infra.settings import eventsourcing_env
from projections.keys import ApiKeyView, KeyRow, MemoryApiKeyView
from projections.status import MemorySessionStatusView, SessionRow, SessionStatusView
from tests.conftest import view_on

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "postgres"])
def views(request: pytest.FixtureRequest) -> Iterator[tuple[SessionStatusView, ApiKeyView]]:
    if request.param == "memory":
        yield MemorySessionStatusView(), MemoryApiKeyView()
        return
    env = eventsourcing_env(request.getfixturevalue("database_url"))
    status = view_on(env, "session_status", PostgresSessionStatusView)
    keys = view_on(env, "api_keys", PostgresApiKeyView)
    yield status, keys
    status.datastore.close()
    keys.datastore.close()


def _row(session_id: str, status: str, position: int) -> SessionRow:
    return SessionRow(
        session_id=session_id,
        name="Support",
        labels={"region": "eu"},
        status=status,
        created_at=NOW,
        updated_at=NOW,
        position=position,
    )


def test_a_view_keeps_the_latest_row_and_its_tracking_together(
    views: tuple[SessionStatusView, ApiKeyView],
) -> None:
    status_view, key_view = views
    status_view.save_session(_row("sess_a", "connecting", 1), Tracking("sessiond", 1))
    status_view.save_session(_row("sess_a", "connected", 2), Tracking("sessiond", 2))
    status_view.insert_tracking(Tracking("sessiond", 3))

    row = status_view.get_session("sess_a")
    assert row is not None and row.status == "connected" and row.labels == {"region": "eu"}
    assert status_view.get_session("sess_b") is None
    assert [r.session_id for r in status_view.all_sessions()] == ["sess_a"]
    assert status_view.max_tracking_id("sessiond") == 3

    key = KeyRow(
        key_id="key_1", session_id="sess_a", prefix="sdk_x", key_hash="h", label="l", created_at=NOW
    )
    key_view.save_keys([key], Tracking("sessiond", 4))
    key_view.save_keys([], Tracking("sessiond", 5))
    stored = key_view.get_key("key_1")
    assert stored is not None and stored.is_active
    assert key_view.max_tracking_id("sessiond") == 5


def test_a_view_refuses_to_track_the_same_position_twice(
    views: tuple[SessionStatusView, ApiKeyView],
) -> None:
    status_view, _ = views
    status_view.save_session(_row("sess_a", "connecting", 1), Tracking("sessiond", 1))
    with pytest.raises(Exception):  # noqa: B017, PT011 - each store raises its own IntegrityError
        status_view.save_session(_row("sess_a", "connected", 1), Tracking("sessiond", 1))
    row = status_view.get_session("sess_a")
    assert row is not None and row.status == "connecting"
