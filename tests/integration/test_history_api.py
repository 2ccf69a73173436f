"""History and audit over HTTP: a session's events in order (secrets redacted), the global
log with a cursor, and a session's state as it was at an instant."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually, simulate, status


async def _timeline(api: Api) -> tuple[dict[str, Any], dict[str, datetime]]:
    """A session taken through its life, with the instants between the steps."""
    marks: dict[str, datetime] = {"before": datetime.now(UTC)}
    await asyncio.sleep(0.02)
    created = await api.create_session("Audited")
    sid, key = created["sessionId"], api.key(created)

    async def qr_shown() -> bool:
        return bool((await status(api, created))["qrExpiresAt"])

    await eventually(qr_shown)
    await asyncio.sleep(0.02)
    marks["pairing"] = datetime.now(UTC)
    await simulate(api, created, "scan")
    await asyncio.sleep(0.02)
    marks["connected"] = datetime.now(UTC)
    assert (await api.client.post(f"/sessions/{sid}/keys", headers=key, json={})).status_code
    assert (await api.client.post(f"/sessions/{sid}/stop", headers=key)).status_code == 200
    await asyncio.sleep(0.02)
    marks["stopped"] = datetime.now(UTC)
    return created, marks


async def test_a_sessions_events_come_in_order_with_secrets_redacted(api: Api) -> None:
    created, _ = await _timeline(api)
    sid, key = created["sessionId"], api.key(created)
    page = (await api.client.get(f"/sessions/{sid}/events", headers=key)).json()
    items = page["items"]
    assert [e["version"] for e in items] == list(range(1, len(items) + 1))
    assert page["next"] is None
    types = [e["type"] for e in items]
    assert types[:3] == ["Created", "ApiKeyIssued", "QRIssued"]
    assert {"Connected", "Stopped"} <= set(types)
    assert all(e["sessionId"] == sid for e in items)
    by_type = {e["type"]: e["data"] for e in items}
    assert by_type["Created"]["name"] == "Audited"
    assert by_type["Created"]["actor"] == "admin"
    assert by_type["ApiKeyIssued"]["key_hash"] == "[redacted]"
    assert by_type["QRIssued"]["code"] == "[redacted]"
    assert by_type["Stopped"]["actor"].startswith("key:")
    assert created["apiKey"]["key"] not in str(page)

    # Check paging: `next` is the version to pass as `after`.
    first = (await api.client.get(f"/sessions/{sid}/events?limit=2", headers=key)).json()
    assert [e["version"] for e in first["items"]] == [1, 2] and first["next"] == 2
    rest = (await api.client.get(f"/sessions/{sid}/events?after=2", headers=key)).json()
    assert [e["version"] for e in rest["items"]] == list(range(3, len(items) + 1))

    # Check a key of another session, or none, reaches nothing; bad paging is a 400.
    other = await api.create_session("Other")
    assert (
        await api.client.get(f"/sessions/{sid}/events", headers=api.key(other))
    ).status_code == 404
    assert (await api.client.get(f"/sessions/{sid}/events")).status_code == 401
    for query in ("limit=0", "limit=1001", "after=-1", "after=first"):
        response = await api.client.get(f"/sessions/{sid}/events?{query}", headers=key)
        assert response.status_code == 400, query
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_global_log_pages_by_position_for_the_admin_only(api: Api) -> None:
    created, _ = await _timeline(api)
    everything = (await api.client.get("/events?limit=1000", headers=ADMIN)).json()["items"]
    positions = [e["position"] for e in everything]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    pages: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await api.client.get(f"/events?after={after}&limit=3", headers=ADMIN)).json()
        pages += page["items"]
        if page["next"] is None:
            break
        after = page["next"]
    assert [e["position"] for e in pages] == positions
    assert (await api.client.get("/events", headers=api.key(created))).status_code == 403
    assert (await api.client.get("/events")).status_code == 401


async def test_the_state_as_of_an_instant_is_rebuilt_from_the_events(api: Api) -> None:
    created, marks = await _timeline(api)
    sid = created["sessionId"]

    async def as_of(instant: datetime, headers: dict[str, str] = ADMIN) -> Any:
        return await api.client.get(
            f"/sessions/{sid}", params={"asOf": instant.isoformat()}, headers=headers
        )

    pairing = (await as_of(marks["pairing"])).json()
    assert (pairing["status"], pairing["qr"]["attempt"]) == ("connecting", 1)
    connected = (await as_of(marks["connected"], api.key(created))).json()
    assert (connected["status"], connected["health"]) == ("connected", "healthy")
    assert connected["phoneJid"]
    stopped = (await as_of(marks["stopped"])).json()
    assert (stopped["status"], stopped["reason"], stopped["stopped"]) == (
        "disconnected",
        "stopped",
        True,
    )
    now = (await api.client.get(f"/sessions/{sid}", headers=ADMIN)).json()
    assert stopped == now  # nothing happened since

    missing = await as_of(marks["before"])
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:sessiond:problem:not-yet-created"
    # Check an instant without a UTC offset is refused: which instant it names is a guess.
    naive = marks["connected"].replace(tzinfo=None).isoformat()
    response = await api.client.get(f"/sessions/{sid}", params={"asOf": naive}, headers=ADMIN)
    assert response.status_code == 400
    assert "UTC offset" in response.json()["detail"]
    bad = await api.client.get(f"/sessions/{sid}", params={"asOf": "yesterday"}, headers=ADMIN)
    assert bad.status_code == 400
