"""Dates at the edges, in every query parameter and body field that takes one: the first and
last days of the calendar, offsets that push an instant out of it, offsets beyond a day, no
offset at all, windows whose arithmetic would overflow. Each gets an answer it can explain
(200, or a 4xx problem), never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api

NO_OFFSET = ["0001-01-01T00:00:00", "2026-11-25T12:00:00", "9999-12-31T23:59:59"]
NOT_RFC3339 = [
    "0001-01-01",
    "9999-12-31",
    "2026-11-25T12:00:00+24:00",
    "2026-11-25T12:00:00+99:00",
    "2026-11-25T12:00:00+00:00:30",
    "2026-02-30T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
]
#: Unix timestamps outside the calendar: 253402300800 is 10000-01-01 (msgspec 0.22 raised a
#: bare ValueError for it, which was a 500).
TIMESTAMPS_OUTSIDE = ["253402300800", "253402300800.5", "-62135596801", "99999999999999"]
BEFORE_ANYTHING = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+23:59", "0001-01-01T23:59:59-23:59"]
AFTER_EVERYTHING = [
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T00:00:00+00:00",
]


@pytest.fixture
async def session(api: Api) -> dict[str, Any]:
    return await api.create_session("Edges")


def problem(answer: Any, status: int, *words: str) -> None:
    where = f"{answer.request.method} {answer.request.url}: {answer.text[:300]}"
    assert answer.status_code == status, where
    assert answer.headers["content-type"].startswith("application/problem+json"), where
    for word in words:
        assert word in answer.json()["detail"], where


async def test_as_of(api: Api, session: dict[str, Any]) -> None:
    url = f"/sessions/{session['sessionId']}"

    async def as_of(value: str) -> Any:
        return await api.client.get(url, params={"asOf": value}, headers=ADMIN)

    for value in NO_OFFSET:
        problem(await as_of(value), 400, "asOf", "UTC offset")
    for value in [*NOT_RFC3339, *TIMESTAMPS_OUTSIDE]:
        problem(await as_of(value), 400, "asOf")
    repeated = await api.client.get(f"{url}?asOf=&asOf=253402300800", headers=ADMIN)
    problem(repeated, 400)
    assert (await as_of("0")).status_code == 404  # 1970, a timestamp in the calendar
    for value in BEFORE_ANYTHING:  # before the session existed
        problem(await as_of(value), 404, "did not exist yet")
    for value in AFTER_EVERYTHING:  # the session as it is
        answer = await as_of(value)
        assert answer.status_code == 200, answer.text
        assert answer.json()["sessionId"] == session["sessionId"]


async def test_uptime_windows(api: Api, session: dict[str, Any]) -> None:
    url = f"/sessions/{session['sessionId']}/uptime"

    async def uptime(**params: str) -> Any:
        return await api.client.get(url, params=params, headers=ADMIN)

    for value in NO_OFFSET:
        problem(await uptime(**{"from": value}), 400, "from", "UTC offset")
        problem(await uptime(to=value), 400, "to", "UTC offset")
    for value in [*NOT_RFC3339, *TIMESTAMPS_OUTSIDE]:
        problem(await uptime(**{"from": value}), 400, "from")
        problem(await uptime(to=value), 400, "to")
    for value in BEFORE_ANYTHING:
        problem(await uptime(to=value), 400, "before")  # ends before it can start
        problem(await uptime(**{"from": value}), 400, "buckets")  # 739,000 days
        problem(await uptime(**{"from": value}, bucket="hour"), 400, "buckets")
    for value in AFTER_EVERYTHING:
        problem(await uptime(**{"from": value}), 400, "before")  # starts after now
        answer = await uptime(to=value, bucket="hour")  # cut at now
        assert answer.status_code == 200, answer.text
    problem(await uptime(**{"from": BEFORE_ANYTHING[0], "to": AFTER_EVERYTHING[0]}), 400)


async def test_replay_windows(api: Api, session: dict[str, Any]) -> None:
    created = await api.client.post(
        "/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["session.stopped"]},
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    url = f"/webhooks/{created.json()['webhookId']}/replay"

    async def replay(start: str, end: str) -> Any:
        return await api.client.post(url, json={"from": start, "to": end}, headers=ADMIN)

    good = "2026-11-25T12:00:00Z"
    for value in NO_OFFSET:
        problem(await replay(value, good), 422, "from")
        problem(await replay(good, value), 422, "to")
    for value in NOT_RFC3339:
        problem(await replay(value, good), 422)
        problem(await replay(good, value), 422)
    for start in BEFORE_ANYTHING:
        for end in AFTER_EVERYTHING:  # the whole log: nothing overflows
            answer = await replay(start, end)
            assert answer.status_code == 202, answer.text
        problem(await replay(AFTER_EVERYTHING[0], start), 422, "after")
