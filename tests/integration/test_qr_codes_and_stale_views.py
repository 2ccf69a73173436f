"""QR codes rotate on their timings and then expire; a process with stale views refuses keys."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from domain.session import Session
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {
        "SESSIOND_QR_FIRST_TIMEOUT": "0.6",
        "SESSIOND_QR_NEXT_TIMEOUT": "0.3",
        "SESSIOND_QR_MAX_CODES": "3",
        "SESSIOND_STALE_AFTER": "0.5",
    }


async def _status(api: Api, created: dict[str, Any]) -> dict[str, Any]:
    response = await api.client.get(
        f"/sessions/{created['sessionId']}/status", headers=api.key(created)
    )
    body: dict[str, Any] = response.json()
    return body


async def test_qr_codes_rotate_then_the_session_expires_until_reconnected(api: Api) -> None:
    created = await api.create_session("Expiring")
    session_id, key = created["sessionId"], api.key(created)

    # Check the attempts count up 1, 2, 3 with a new code each time, and the endpoint shows
    # them as issued (polled: on a loaded machine a poll may miss a code that lasts 0.3 s).
    seen: dict[int, str] = {}

    async def expired() -> bool:
        response = await api.client.get(f"/sessions/{session_id}/qr", headers=key)
        if response.status_code == 200:
            qr = response.json()
            seen.setdefault(qr["attempt"], qr["code"])
            assert qr["maxAttempts"] == 3
        return bool((await _status(api, created))["status"] == "expired")

    await eventually(expired)
    events = api.container.app.events.get(UUID(session_id.removeprefix("sess_")))
    issued = {e.attempt: e.code for e in events if isinstance(e, Session.QRIssued)}
    assert sorted(issued) == [1, 2, 3] and len(set(issued.values())) == 3
    assert seen and all(issued[attempt] == code for attempt, code in seen.items())

    # Check the expired session says why, shows no QR code, and is unhealthy.
    status = await _status(api, created)
    assert (status["status"], status["reason"], status["health"]) == (
        "expired",
        "qr_expired",
        "unhealthy",
    )
    assert status["qrExpiresAt"] is None
    no_qr = await api.client.get(f"/sessions/{session_id}/qr", headers=key)
    assert no_qr.status_code == 409 and no_qr.headers["content-type"].startswith(
        "application/problem+json"
    )

    # Check reconnect starts a new round of codes at attempt 1.
    assert (
        await api.client.post(f"/sessions/{session_id}/reconnect", headers=key)
    ).status_code == 200

    async def shown() -> Any:
        response = await api.client.get(f"/sessions/{session_id}/qr", headers=key)
        return response.json() if response.status_code == 200 else None

    assert (await eventually(shown))["attempt"] == 1


async def test_reconnecting_a_connected_session_is_refused_with_409(api: Api) -> None:
    created = await api.create_session("Busy")
    session_id = created["sessionId"]

    async def scanned() -> bool:
        answer = await api.client.post(f"/simulator/sessions/{session_id}/scan", headers=ADMIN)
        return answer.status_code == 200

    await eventually(scanned)
    refused = await api.client.post(f"/sessions/{session_id}/reconnect", headers=api.key(created))
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:sessiond:problem:invalid-transition"
    assert "connected" in refused.json()["detail"]


async def test_a_process_whose_views_went_stale_refuses_session_keys(api: Api) -> None:
    created = await api.create_session("Stale")
    assert (await _status(api, created)).get("status") == "connecting"
    read_models = api.container.read_models
    assert read_models is not None
    await asyncio.to_thread(read_models.stop)  # the listener dies: no more refreshes

    async def stale() -> bool:
        return not read_models.is_fresh()

    await eventually(stale)
    refused = await api.client.get(
        f"/sessions/{created['sessionId']}/status", headers=api.key(created)
    )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["views"] == "stale"
