"""Steps the API tests share: wait for a condition, read a status, drive the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg.sql import SQL, Identifier

from domain.values import session_uuid
from infra.whatsapp.simulator import SimulatorGateway
from tests.integration.conftest import ADMIN, Api


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout} s: last {result!r}")
        await asyncio.sleep(0.03)


async def status(api: Api, created: dict[str, Any]) -> dict[str, Any]:
    response = await api.client.get(
        f"/sessions/{created['sessionId']}/status", headers=api.key(created)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def simulator(api: Api) -> SimulatorGateway:
    gateway = api.container.gateway
    assert isinstance(gateway, SimulatorGateway)
    return gateway


def uuid_of(created: dict[str, Any]) -> Any:
    return session_uuid(created["sessionId"])


def event_types(api: Api, session_id: str) -> list[str]:
    return [type(e).__name__ for e in api.container.app.events.get(session_uuid(session_id))]


async def simulate(api: Api, created: dict[str, Any], action: str, **body: Any) -> Any:
    """A simulator action, retried while the session's worker has not picked it up yet."""
    url = f"/simulator/sessions/{created['sessionId']}/{action}"

    async def attempt() -> Any:
        response = await api.client.post(url, headers=ADMIN, json=body or None)
        return response if response.status_code == 200 else None

    return await eventually(attempt)


async def connected_session(api: Api, name: str = "Support") -> dict[str, Any]:
    created = await api.create_session(name)
    await simulate(api, created, "scan")
    assert (await status(api, created))["status"] == "connected"
    return created


async def qr_shown(api: Api, session_id: str) -> None:
    """Wait for the worker to show the session's first QR code."""

    async def shown() -> bool:
        response = await api.client.get(f"/sessions/{session_id}/qr", headers=ADMIN)
        return response.status_code == 200

    await eventually(shown)


async def send(
    api: Api, created: dict[str, Any], text: str, to: str = "+14155550123", **headers: str
) -> Any:
    return await api.client.post(
        f"/sessions/{created['sessionId']}/messages",
        json={"to": to, "text": text},
        headers={**api.key(created), **headers},
    )


async def message(api: Api, created: dict[str, Any], message_id: str) -> dict[str, Any]:
    response = await api.client.get(
        f"/sessions/{created['sessionId']}/messages/{message_id}", headers=api.key(created)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_status(
    api: Api, created: dict[str, Any], message_id: str, wanted: str
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await message(api, created, message_id)
        return body if body["status"] == wanted else None

    result: dict[str, Any] = await eventually(check)
    return result


def stored_states(api: Api) -> dict[str, list[bytes]]:
    """Every stored event's and snapshot's state, as bytes, by table."""
    recorder: Any = api.container.app.recorder
    snapshots: Any = api.container.app.snapshots
    states = {}
    with recorder.datastore.cursor() as curs:
        for table in (recorder.events_table_name, snapshots.recorder.events_table_name):
            curs.execute(SQL("SELECT state FROM {0}").format(Identifier(table)))
            states[table] = [bytes(row["state"]) for row in curs.fetchall()]
    return states


async def disabled_webhook(api: Api, webhook_id: str) -> dict[str, Any]:
    """The endpoint once the service has disabled it (as the admin reads it)."""

    async def disabled() -> Any:
        body = (await api.client.get(f"/webhooks/{webhook_id}", headers=ADMIN)).json()
        return body if not body["enabled"] else None

    found: dict[str, Any] = await eventually(disabled)
    return found
