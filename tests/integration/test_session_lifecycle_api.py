"""The operator's path over HTTP against the simulator, with read-your-writes at every step."""

from __future__ import annotations

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually


async def test_the_seed_flow_create_scan_stop_reconnect_expire_delete(api: Api) -> None:
    client = api.client
    created = await api.create_session("Support", labels={"useCase": "support", "region": "eu"})
    session_id, key = created["sessionId"], api.key(created)
    assert session_id.startswith("sess_")
    assert created["status"] == "connecting"

    # Check a QR code is shown, attempt 1 of 6.
    qr = await _wait_for_qr(api, session_id, key)
    assert qr["attempt"] == 1 and qr["maxAttempts"] == 6 and qr["code"]

    # Check the scan connects the session, visible at once in the status.
    scanned = await client.post(f"/simulator/sessions/{session_id}/scan", headers=ADMIN)
    assert scanned.status_code == 200, scanned.text
    status = (await client.get(f"/sessions/{session_id}/status", headers=key)).json()
    assert status["status"] == "connected"
    assert status["health"] == "healthy"
    assert status["connectedAt"] is not None
    assert set(status["metrics"]) == {
        "messagesSent",
        "messagesReceived",
        "uptime",
        "messagesDelivered",
        "messagesRead",
        "messagesFailed",
        "queueDepth",
    }

    # Check stop: disconnected with the reason "stopped"; a second stop is harmless.
    stopped = (await client.post(f"/sessions/{session_id}/stop", headers=key)).json()
    assert (stopped["status"], stopped["reason"], stopped["health"]) == (
        "disconnected",
        "stopped",
        "stopped",
    )
    again = await client.post(f"/sessions/{session_id}/stop", headers=key)
    assert again.status_code == 200 and again.json()["reason"] == "stopped"

    # Check reconnect resumes the linked device: connected again with no new scan.
    reconnected = (await client.post(f"/sessions/{session_id}/reconnect", headers=key)).json()
    # The answer shows the session at or after the command (read-your-writes): connecting, or
    # already connected again when the worker resumed the device before the answer was read.
    assert reconnected["status"] in ("connecting", "connected"), reconnected
    assert reconnected["reason"] is None, reconnected

    async def connected() -> bool:
        status = (await client.get(f"/sessions/{session_id}/status", headers=key)).json()
        return bool(status["status"] == "connected")

    await eventually(connected)

    # Check delete answers 204, then the session and its key are gone.
    deleted = await client.delete(f"/sessions/{session_id}", headers=ADMIN)
    assert deleted.status_code == 204
    assert (await client.get(f"/sessions/{session_id}", headers=ADMIN)).status_code == 404
    assert (await client.get(f"/sessions/{session_id}/status", headers=key)).status_code == 401


async def _wait_for_qr(api: Api, session_id: str, key: dict[str, str]) -> dict[str, object]:
    async def shown() -> dict[str, object] | None:
        response = await api.client.get(f"/sessions/{session_id}/qr", headers=key)
        return dict(response.json()) if response.status_code == 200 else None

    found: dict[str, object] = await eventually(shown)
    return found
