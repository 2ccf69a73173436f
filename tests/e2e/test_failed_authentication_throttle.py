"""Guessing is throttled: failed authentications per client address, on every route, shared
through Redis; X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
UNTHROTTLED = ("/health/", "/metrics", "/schema")
# Malformed, mistyped, unknown and wrong admin keys: every kind counts.
BAD_KEYS = [
    "nope",
    "sdk_" + "A" * 38,
    "sda_" + "B" * 38,
    "sdk_0123456789abcdefghijABCDEFGHIJ012345",
    "test-admin-key-0123456789-wrong",
]


def a_loopback_address() -> str:
    """A loopback address of this test alone (counts in a shared Redis never mix)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client_from(server: Sessiond, address: str, **kwargs: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, timeout=10, transport=transport, **kwargs)


def flood(
    client: httpx.Client, path: str, failures: int = 10, headers: dict[str, str] | None = None
) -> None:
    for n in range(failures):
        bad = {"x-api-key": BAD_KEYS[n % len(BAD_KEYS)], **(headers or {})}
        refused = client.get(path, headers=bad)
        assert refused.status_code == 401, refused.text


def assert_locked_out(answer: httpx.Response) -> None:
    assert answer.status_code == 429, (answer.request.url, answer.text)
    assert 1 <= int(answer.headers["retry-after"]) <= 60


def every_route(client: httpx.Client, ids: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document with its parameters filled in."""
    document = client.get("/schema/openapi.json").json()
    for template, operations in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)
        for method in operations:
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path


def test_a_flood_of_bad_keys_locks_that_address_out_of_every_route_and_no_other(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    attacker_address = a_loopback_address()
    with server.client() as good, client_from(server, attacker_address) as attacker:
        created = create_session(good, "Victim")
        session_id = created["sessionId"]
        status = f"/sessions/{session_id}/status"

        # Check ten failures, of every kind of key, are answered 401; the eleventh is 429.
        for n in range(10):
            bad = {"x-api-key": BAD_KEYS[n % len(BAD_KEYS)]}
            assert attacker.get(status if n % 2 else "/sessions", headers=bad).status_code == 401
            assert good.get(status, headers=key_of(created)).status_code == 200
        assert_locked_out(attacker.get(status, headers={"x-api-key": BAD_KEYS[0]}))

        # Check every route refuses that address, with a valid admin or session key too (the
        # key is not even looked at), the status fast path and the dashboard included.
        ids = {
            "session_id": session_id,
            "key_id": created["apiKey"]["keyId"],
            "webhook_id": "wh_0",
            "delivery_id": "dlv_0",
            "message_id": "msg_0",
            "rule_id": "alr_0",
        }
        routes = list(every_route(good, ids))
        assert len(routes) > 30
        # Check the API's description says so: every operation that takes a key may be 429.
        document = good.get("/schema/openapi.json").json()
        for template, operations in document["paths"].items():
            for method, operation in operations.items():
                if isinstance(operation, dict) and operation.get("security"):
                    assert "429" in operation["responses"], (method, template)
        for method, path in routes:
            answer = attacker.request(method, path, headers=ADMIN)
            if path.startswith(UNTHROTTLED):
                assert answer.status_code != 429, path
            else:
                assert_locked_out(answer)
        assert_locked_out(attacker.get(status, headers=key_of(created)))
        for path in ("/dashboard/", "/dashboard/sign-in"):
            assert_locked_out(attacker.get(path))
        assert attacker.get("/health/ready").status_code == 200  # probes stay open

        # Check the other client is unaffected all along.
        assert all(good.get(status, headers=key_of(created)).status_code == 200 for _ in range(20))
        assert good.get("/sessions", headers=ADMIN).status_code == 200


def test_x_forwarded_for_is_ignored_without_trusted_proxies(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with client_from(server, a_loopback_address()) as attacker:
        # An attacker rotating the header is still one address.
        for n in range(10):
            forged = {"x-api-key": BAD_KEYS[n % 5], "x-forwarded-for": f"198.51.100.{n}"}
            assert attacker.get("/sessions", headers=forged).status_code == 401
        fresh = {"x-api-key": ADMIN_KEY, "x-forwarded-for": "198.51.100.200"}
        assert_locked_out(attacker.get("/sessions", headers=fresh))


def test_behind_trusted_proxies_each_forwarded_client_is_counted_on_its_own(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    proxy = a_loopback_address()
    server = start("serve", {**sessiond_env, "SESSIOND_TRUSTED_PROXIES": f"{proxy}, 10.0.0.0/8"})
    with client_from(server, proxy) as through_proxy, server.client() as direct:
        created = create_session(direct, "Behind a proxy")
        status = f"/sessions/{created['sessionId']}/status"
        # The client 203.0.113.7 guesses through two proxies (10.1.2.3, then ours).
        flood(through_proxy, status, headers={"x-forwarded-for": "203.0.113.7, 10.1.2.3"})
        locked = {"x-forwarded-for": "203.0.113.7, 10.1.2.3", **key_of(created)}
        assert_locked_out(through_proxy.get(status, headers=locked))
        # Check it cannot escape by writing another address before its own.
        escape = {"x-forwarded-for": "203.0.113.8, 203.0.113.7", **key_of(created)}
        assert_locked_out(through_proxy.get(status, headers=escape))

        # Check another client through the same proxy, and direct clients, go on.
        other = {"x-forwarded-for": "203.0.113.8", **key_of(created)}
        assert through_proxy.get(status, headers=other).status_code == 200
        assert direct.get(status, headers=key_of(created)).status_code == 200
        # Check the header of a peer that is no trusted proxy is ignored.
        forged = {"x-forwarded-for": "203.0.113.7", **key_of(created)}
        assert direct.get(status, headers=forged).status_code == 200


def test_the_dashboard_sign_in_is_throttled_too(start: Any, sessiond_env: dict[str, str]) -> None:
    server = start("serve", sessiond_env)
    with (
        client_from(server, a_loopback_address()) as guesser,
        client_from(server, a_loopback_address()) as operator,
    ):

        def sign_in(client: httpx.Client, key: str) -> httpx.Response:
            page = client.get("/dashboard/sign-in")
            token = TOKEN.search(page.text)
            assert token is not None, page.text
            return client.post(
                "/dashboard/sign-in", data={"admin_key": key, "csrf_token": token.group(1)}
            )

        for n in range(10):
            assert sign_in(guesser, f"not-the-admin-key-{n}").status_code == 401
        refused = guesser.get("/dashboard/sign-in")
        assert_locked_out(refused)
        assert "Too many tries" in refused.text  # a page, as the dashboard answers errors
        # Check the right key is refused too from that address, and works from another.
        assert_locked_out(guesser.post("/dashboard/sign-in", data={"admin_key": ADMIN_KEY}))
        assert sign_in(operator, ADMIN_KEY).status_code == 303


def test_with_redis_api_processes_share_the_count_and_without_it_they_say_so(
    redis_url: str, start: Any, sessiond_env: dict[str, str]
) -> None:
    shared = {**sessiond_env, "SESSIOND_REDIS_URL": redis_url}
    one, two = start("api", shared), start("api", shared)
    address = a_loopback_address()
    with client_from(one, address) as to_one, client_from(two, address) as to_two:
        flood(to_one, "/sessions", failures=5)
        flood(to_two, "/sessions", failures=5)
        # Check the eleventh failure, on either process, finds the address locked out.
        assert_locked_out(to_one.get("/sessions", headers=ADMIN))
        assert_locked_out(to_two.get("/sessions", headers=ADMIN))
        assert to_one.get("/health/ready").json()["warnings"] == []

    # Without Redis each process counts alone: the ready probe and the log say so.
    three = start("api", sessiond_env)
    four = start("api", sessiond_env)
    with client_from(three, a_loopback_address()) as client:
        warnings = client.get("/health/ready").json()["warnings"]
    assert len(warnings) == 1 and "without SESSIOND_REDIS_URL" in warnings[0], warnings
    assert "without SESSIOND_REDIS_URL" in four.full_log()
