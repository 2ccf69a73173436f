"""Per-session rate limits: 429 with Retry-After and RateLimit headers, shared through Redis."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.conftest import ADMIN, create_session, key_of


def test_each_session_has_its_own_budget_and_429_says_when_to_retry(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", {**sessiond_env, "SESSIOND_DEFAULT_RATE_LIMIT": "5"})
    with server.client() as client:
        small = create_session(client, "Small")
        large = create_session(client, "Large", rateLimit={"requestsPerMinute": 50})
        small_status = f"/sessions/{small['sessionId']}/status"

        answers = [client.get(small_status, headers=key_of(small)) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 5 + [429]
        assert answers[0].headers["ratelimit-limit"] == "5"
        assert answers[4].headers["ratelimit-remaining"] == "0"
        refused = answers[5]
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert (
            refused.json()["status"] == 429 and "5 requests per minute" in refused.json()["detail"]
        )

        # Check another session, with a larger limit, is not affected.
        large_status = f"/sessions/{large['sessionId']}/status"
        assert all(
            client.get(large_status, headers=key_of(large)).status_code == 200 for _ in range(10)
        )

        # Check the admin raises the small session's limit, and it applies at once.
        raised = client.put(
            f"/sessions/{small['sessionId']}/rate-limit",
            json={"requestsPerMinute": 100},
            headers=ADMIN,
        )
        assert raised.status_code == 200 and raised.json()["rateLimit"]["requestsPerMinute"] == 100
        assert client.get(small_status, headers=key_of(small)).status_code == 200


def test_refused_requests_do_not_spend_a_session_budget(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    # Twenty refused keys on purpose: more than the failure throttle allows by default.
    server = start(
        "serve",
        {**sessiond_env, "SESSIOND_DEFAULT_RATE_LIMIT": "3", "SESSIOND_AUTH_FAILURE_LIMIT": "1000"},
    )
    with server.client() as client:
        victim, other = create_session(client, "Victim"), create_session(client, "Other")
        path = f"/sessions/{victim['sessionId']}/status"
        for _ in range(20):
            assert client.get(path, headers={"x-api-key": "sdk_wrong"}).status_code == 401
            assert client.get(path, headers=key_of(other)).status_code == 404
        assert [client.get(path, headers=key_of(victim)).status_code for _ in range(3)] == [200] * 3


def test_api_processes_share_one_budget_through_redis(
    redis_url: str, start: Any, sessiond_env: dict[str, str]
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_DEFAULT_RATE_LIMIT": "6",
        "SESSIOND_REDIS_URL": redis_url,
    }
    one = start("serve", env)
    two = start("api", env)
    with one.client() as a, two.client() as b:
        created = create_session(a, "Shared-" + uuid.uuid4().hex[:6])
        path = f"/sessions/{created['sessionId']}/status"
        key = key_of(created)
        codes = []
        for index in range(8):
            client = a if index % 2 == 0 else b
            codes.append(client.get(path, headers=key).status_code)
        assert codes[:6] == [200] * 6
        assert codes[6:] == [429, 429]
