"""A wait for the views' copy gives way to a cancel, even one that lands as it is answered:
else whatever waits on it (a request, the dashboard's watcher) could outlive the server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from infra.postgres.revocations import RevocationRow
from infra.postgres.viewcache import CachedReadModels


async def test_a_cancel_that_lands_as_the_wait_is_answered_is_not_lost() -> None:
    models = CachedReadModels("", SimpleNamespace(datastore=None), None)  # type: ignore[arg-type]
    waiting = asyncio.create_task(models.wait(1, 60))
    while not models._waiters:  # the task is waiting for position 1
        await asyncio.sleep(0)
    ((_, answer),) = models._waiters
    answer.set_result(None)  # a refresh reached position 1...
    waiting.cancel()  # ...as the process stops
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_wait_ends_when_the_copy_gets_there_or_after_its_time() -> None:
    models = CachedReadModels("", SimpleNamespace(datastore=None), None)  # type: ignore[arg-type]
    waiting = asyncio.create_task(models.wait(1, 60))
    while not models._waiters:
        await asyncio.sleep(0)
    models.position = 1
    models._wake_waiters()
    assert await waiting is True
    assert await models.wait(2, 0.01) is False


def test_a_key_refused_for_its_deleted_session_is_known_as_such_before_the_status_view() -> None:
    """A session deleted with its keys: the revocations say so before the status view has the
    deletion (its projector may be stopped), so a stream of one of its keys ends with
    ``session-deleted``, not ``key-revoked``."""
    models = CachedReadModels("", SimpleNamespace(datastore=None), None)  # type: ignore[arg-type]
    assert models.session_deleted("sess_a")  # unknown: never was
    models._revoke(
        [
            RevocationRow(7, "sess_a", (), session_deleted=True),
            RevocationRow(8, "sess_a", ("key_1", "key_2"), session_deleted=False),
            RevocationRow(9, "sess_b", ("key_3",), session_deleted=False),
        ]
    )
    assert models.session_deleted("sess_a")
    assert models._revoked_keys == {"key_1", "key_2", "key_3"}
    assert models._deleted_sessions == {"sess_a"}
