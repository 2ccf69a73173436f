"""The status fast path answers exactly as the ordinary Litestar handler would."""

from __future__ import annotations

from typing import Any

import httpx

from api.fastpath import FAST_STATUS
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually

# Headers that differ between two requests whatever path answers them.
VARYING = {"date", "ratelimit-remaining", "ratelimit-reset", "retry-after"}


def _normal(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in VARYING}
    body: Any = response.content
    if response.headers.get("content-type", "").startswith(
        ("application/json", "application/problem")
    ):
        body = response.json()
        if isinstance(body, dict) and "metrics" in body:
            body["metrics"]["uptime"] = None  # moves with the clock
    return response.status_code, headers, body


async def _both(api: Api, path: str, headers: dict[str, str]) -> tuple[Any, Any]:
    handler = next(
        h
        for route in api.client.app.routes
        for h in getattr(route, "route_handlers", [])
        if h.handler_name == "get_status"
    )
    try:
        fast = await api.client.get(path, headers=headers)
        handler.opt[FAST_STATUS] = False
        ordinary = await api.client.get(path, headers=headers)
    finally:
        handler.opt[FAST_STATUS] = True
    return _normal(fast), _normal(ordinary)


async def test_every_answer_of_the_fast_path_matches_the_handler(api: Api) -> None:
    mine, other = await api.create_session("Mine"), await api.create_session("Other")
    status = f"/sessions/{mine['sessionId']}/status"

    # Compare once the session is settled (its first QR code shown), so that nothing the
    # worker records between the two requests makes them differ.
    async def settled() -> bool:
        return bool((await api.client.get(status, headers=ADMIN)).json()["qrExpiresAt"])

    await eventually(settled)
    cases = [
        (status, ADMIN),
        (status, api.key(mine)),
        (status, {}),
        (status, {"x-api-key": "sdk_not-a-key"}),
        (status, api.key(other)),
        (f"/sessions/sess_{'0' * 32}/status", ADMIN),
        (f"/sessions/{'a' * 500}/status", ADMIN),
        (status + "?x=1&x=2", api.key(mine)),
    ]
    for path, headers in cases:
        fast, ordinary = await _both(api, path, headers)
        assert fast == ordinary, (path, headers)
    fast, _ = await _both(api, status, api.key(mine))
    assert fast[0] == 200 and fast[1]["ratelimit-limit"] == "1000"


async def test_the_fast_path_refuses_an_exhausted_budget_like_the_handler(api: Api) -> None:
    created = await api.create_session("Tight")
    path = f"/sessions/{created['sessionId']}/rate-limit"
    assert (
        await api.client.put(path, json={"requestsPerMinute": 1}, headers=ADMIN)
    ).status_code == 200
    status = f"/sessions/{created['sessionId']}/status"
    assert (await api.client.get(status, headers=api.key(created))).status_code == 200
    fast, ordinary = await _both(api, status, api.key(created))
    assert fast == ordinary
    assert fast[0] == 429
