"""`GET /sessions/{id}/uptime` over PostgreSQL: a known (back-dated) timeline, the live one,
and bad windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from domain.values import session_uuid
from tests.integration.conftest import Api
from tests.integration.test_gateway_worker import eventually, simulate, status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_known_timeline_gives_its_hourly_series(api: Api, database_url: str) -> None:
    created = await api.create_session("Analysed")
    uuid = session_uuid(created["sessionId"])
    # Transitions of a past day, written as the projection would (negative positions keep
    # them apart from the real ones): up 01:00-03:00, stopped 04:00-06:00, up from 06:30.
    timeline: list[tuple[float, bool, bool]] = [(0, True, False), (1, True, True)]
    timeline += [(3, True, False), (4, False, False)]
    timeline += [(6, True, False), (6.5, True, True), (8, False, False)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for n, (hours, running, connected) in enumerate(timeline):
            conn.execute(
                "INSERT INTO sessiond_uptime VALUES (%s, %s, %s, %s, %s)",
                (uuid, -100 + n, T0 + timedelta(hours=hours), running, connected),
            )
    url = f"/sessions/{created['sessionId']}/uptime"
    params = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=8)).isoformat()}
    body = (
        await api.client.get(url, params={**params, "bucket": "hour"}, headers=api.key(created))
    ).json()
    assert [p["uptime"] for p in body["items"]] == [0.0, 1.0, 1.0, 0.0, None, None, 0.5, 1.0]
    assert abs(body["uptime"] - 3.5 / 6) < 1e-9
    day = (await api.client.get(url, params=params, headers=api.key(created))).json()
    assert day["bucket"] == "day" and len(day["items"]) == 1
    assert abs(day["items"][0]["uptime"] - 3.5 / 6) < 1e-9

    # Check the default window (the last 30 days, or since creation) holds the live session.
    await simulate(api, created, "scan")

    async def connected_a_while() -> bool:
        live = (await api.client.get(url, headers=api.key(created))).json()
        return bool(live["uptime"] and live["uptime"] > 0)

    await eventually(connected_a_while)
    assert (await status(api, created))["status"] == "connected"


async def test_bad_windows_are_refused_with_400(api: Api) -> None:
    created = await api.create_session("Windows")
    url = f"/sessions/{created['sessionId']}/uptime"
    key = api.key(created)
    now = datetime.now(UTC)
    cases = [
        {"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
        {"from": (now - timedelta(days=800)).isoformat(), "bucket": "hour"},
        {"bucket": "minute"},
        {"from": "yesterday"},
    ]
    for params in cases:
        response = await api.client.get(url, params=params, headers=key)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    other = await api.create_session("Other")
    assert (await api.client.get(url, headers=api.key(other))).status_code == 404
