"""A gateway driver that fails keeps its sessions; only a lost lock hands them over."""

from __future__ import annotations

import asyncio

import psycopg

from domain.values import session_uuid
from tests.integration.conftest import ADMIN, Api


async def _connected_session(api: Api) -> dict[str, str]:
    created = await api.create_session("Steady")
    for _ in range(200):
        scanned = await api.client.post(
            f"/simulator/sessions/{created['sessionId']}/scan", headers=ADMIN
        )
        if scanned.status_code == 200:
            return created
        await asyncio.sleep(0.02)
    raise AssertionError("never scanned")


def _kill_connections(database_url: str, *, keep_lock_holders: bool) -> None:
    spare = "AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            + (spare if keep_lock_holders else "")
        )


def _event_types(api: Api, session_id: str) -> list[str]:
    events = api.container.app.events.get(session_uuid(session_id))
    return [type(event).__name__ for event in events]


async def test_a_failed_runner_restarts_without_touching_running_sessions(
    api: Api, database_url: str
) -> None:
    created = await _connected_session(api)
    before = _event_types(api, created["sessionId"])
    driver = next(s for s in api.container.supervisors if s.name == "gateway_driver")
    restarts = driver.restarts

    await asyncio.to_thread(_kill_connections, database_url, keep_lock_holders=True)
    for _ in range(300):
        if driver.restarts > restarts and driver.is_leader.is_set():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)

    # Check the runner was restarted, but no session was "restored": nothing new recorded.
    assert driver.restarts > restarts
    assert _event_types(api, created["sessionId"]) == before
    status = await api.client.get(
        f"/sessions/{created['sessionId']}/status", headers=api.key(created)
    )
    assert status.json()["status"] == "connected"


async def test_a_driver_that_loses_its_lock_stops_its_clients_and_restores_them(
    api: Api, database_url: str
) -> None:
    created = await _connected_session(api)
    await asyncio.to_thread(_kill_connections, database_url, keep_lock_holders=False)

    # Check the session comes back connected, with the interruption on record.
    for _ in range(300):
        types = _event_types(api, created["sessionId"])
        if types[-2:] == ["Disconnected", "Connected"]:
            break
        await asyncio.sleep(0.05)
    assert _event_types(api, created["sessionId"])[-2:] == ["Disconnected", "Connected"]
    events = list(api.container.app.events.get(session_uuid(created["sessionId"])))
    assert getattr(events[-2], "reason", None) == "service_restarted"
