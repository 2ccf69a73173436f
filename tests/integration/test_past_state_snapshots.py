"""A session's past state (`asOf`) starts from the nearest status snapshot at or before the
instant: its cost depends on the events up to the instant, and it equals the state rebuilt
from the first event."""

from __future__ import annotations

from typing import Any

from domain.values import session_uuid
from infra.postgres.snapshots import PostgresStatusSnapshots
from projections.history import SNAPSHOT_EVERY, fold, past_state
from tests.integration.conftest import Api


async def test_a_past_state_starts_from_the_nearest_snapshot_and_equals_a_full_rebuild(
    api: Api,
) -> None:
    app = api.container.app
    created = app.create_session("Long-lived", {}, None, "admin")
    uuid = session_uuid(created.session_id)
    for n in range(1, 349):  # 350 events at least: its creation, its first key, 348 changes
        app.set_rate_limit(created.session_id, n, "admin")
    events: list[Any] = list(app.events.get(uuid))  # and what the worker recorded meanwhile
    assert len(events) >= 350
    snapshots = PostgresStatusSnapshots(app.factory.datastore)  # type: ignore[attr-defined]
    at_250 = events[249].timestamp

    # Check: the first read folds the events up to the instant, and keeps snapshots.
    first = past_state(app, uuid, at_250, snapshots)
    assert (first.from_version, first.decoded) == (0, 250)
    assert first.row == fold(events[:250])
    # Check: the next read starts from the snapshot at version 200.
    again = past_state(app, uuid, at_250, snapshots)
    assert (again.from_version, again.decoded) == (200, 50)
    assert again.row == first.row
    # Check: a later instant starts from the nearest snapshot, and keeps the next ones.
    latest = past_state(app, uuid, events[-1].timestamp, snapshots)
    assert (latest.from_version, latest.decoded) == (200, len(events) - 200)
    assert latest.row == fold(events)
    assert past_state(app, uuid, events[-1].timestamp, snapshots).from_version == 300
    # Check: an instant before the first snapshot still starts from the first event.
    early = past_state(app, uuid, events[9].timestamp, snapshots)
    assert (early.from_version, early.decoded) == (0, 10)
    assert early.row == fold(events[:10])
    # Check: before the session existed, there is no row.
    assert past_state(app, uuid, events[0].timestamp.replace(year=2000), snapshots).row is None
    assert SNAPSHOT_EVERY == 100
