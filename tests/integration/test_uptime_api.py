"""`GET /sessions/{id}/uptime` over PostgreSQL: a known (back-dated) timeline, the live one,
and bad windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from domain.values import session_uuid
from tests.integration.conftest import Api
from tests.integration.steps import eventually, simulate, status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_known_timeline_gives_its_hourly_series(api: Api, database_url: str) -> None:
    created = await api.create_session("Analysed")
    uuid = session_uuid(created["sessionId"])
    # Transitions of a past day, written as the projection would (negative positions keep
    # them apart from the real ones): linked at 01:00, up 01:00-03:00, stopped 04:00-06:00,
    # up from 06:30.
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
    # Check the hour before the first link is not in service, and uptime is a percentage.
    assert [p["uptime"] for p in body["items"]] == [None, 100, 100, 0, None, None, 50, 100]
    assert [p["runningSeconds"] for p in body["items"]][:2] == [0, 3600]
    assert body["uptime"] == 70.0  # 3.5 h connected of 5 h in service
    day = (await api.client.get(url, params=params, headers=api.key(created))).json()
    assert day["bucket"] == "day" and len(day["items"]) == 1
    assert day["items"][0]["uptime"] == day["uptime"] == 70.0

    # Check a window that starts after the link, disconnected, still counts as in service:
    # the view gives the first link along with the state at the start.
    later = {"from": (T0 + timedelta(hours=3.5)).isoformat(), "to": params["to"]}
    body = (
        await api.client.get(url, params={**later, "bucket": "hour"}, headers=api.key(created))
    ).json()
    assert [p["uptime"] for p in body["items"]] == [0, None, 0, 100, 100]

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
        # Edges of the calendar, no offset, offsets that leave it, a start in the future.
        {"to": "0001-01-01T00:00:00Z"},
        {"to": "0001-01-01T00:00:00Z", "bucket": "hour"},
        {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"},
        {"from": "0001-01-01T00:00:00+23:59"},
        {"from": "2026-01-01T00:00:00"},
        {"to": "2026-01-01T00:00:00+24:00"},
        {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
        {"from": (now + timedelta(hours=1)).isoformat()},
    ]
    for params in cases:
        response = await api.client.get(url, params=params, headers=key)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    # Check an end past now is cut at now: nothing is counted for time to come.
    for end in ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59-23:59"):
        cut = await api.client.get(url, params={"to": end}, headers=key)
        assert cut.status_code == 200, cut.text
        assert datetime.fromisoformat(cut.json()["end"]) < now + timedelta(minutes=5)
    other = await api.create_session("Other")
    assert (await api.client.get(url, headers=api.key(other))).status_code == 404
