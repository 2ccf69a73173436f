"""A key reaches its own session only, and a revoked key is refused by every process at once."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, create_session, key_of

SESSION_ROUTES = [
    ("GET", ""),
    ("GET", "/status"),
    ("GET", "/qr"),
    ("POST", "/reconnect"),
    ("POST", "/stop"),
    ("GET", "/keys"),
    ("POST", "/keys"),
]


def test_a_session_key_never_reaches_another_session(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        a, b = create_session(client, "A"), create_session(client, "B")
        b_id = b["sessionId"]

        # Check every route of B answers 404 to A's key, exactly as an unknown id would.
        for method, suffix in SESSION_ROUTES:
            other = client.request(method, f"/sessions/{b_id}{suffix}", headers=key_of(a))
            unknown = client.request(
                method, f"/sessions/sess_{'0' * 32}{suffix}", headers=key_of(a)
            )
            assert other.status_code == unknown.status_code == 404, (method, suffix)
            assert other.headers["content-type"].startswith("application/problem+json")
            assert other.json()["type"] == unknown.json()["type"]
        assert (
            client.delete(
                f"/sessions/{b_id}/keys/{b['apiKey']['keyId']}", headers=key_of(a)
            ).status_code
            == 404
        )
        assert client.delete(f"/sessions/{b_id}", headers=key_of(a)).status_code == 404

        # Check B is untouched: still connecting, its key still works.
        status = client.get(f"/sessions/{b_id}/status", headers=key_of(b))
        assert status.status_code == 200 and status.json()["status"] == "connecting"

        # Check admin-only routes refuse a session key on its own session with 403.
        a_id = a["sessionId"]
        assert client.delete(f"/sessions/{a_id}", headers=key_of(a)).status_code == 403
        assert client.get("/sessions", headers=key_of(a)).status_code == 403

        # Check no key, a garbage key and a mistyped key all answer 401.
        assert client.get(f"/sessions/{a_id}/status").status_code == 401
        assert (
            client.get(f"/sessions/{a_id}/status", headers={"x-api-key": "nope"}).status_code == 401
        )
        key = a["apiKey"]["key"]
        mistyped = key[:-3] + ("A" if key[-3] != "A" else "B") + key[-2:]
        assert (
            client.get(f"/sessions/{a_id}/status", headers={"x-api-key": mistyped}).status_code
            == 401
        )


def test_a_revoked_key_is_refused_by_every_process_once_the_revocation_answers(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    # Revoked keys are sent on purpose, more than ten a minute from this address.
    env = {**sessiond_env, "SESSIOND_AUTH_FAILURE_LIMIT": "1000"}
    serve = start("serve", env)
    other_api = start("api", env)
    with serve.client() as one, other_api.client() as two:
        created = create_session(one, "Revocations")
        session_id = created["sessionId"]
        for round_number in range(15):
            issued = one.post(
                f"/sessions/{session_id}/keys", json={"label": f"k{round_number}"}, headers=ADMIN
            )
            assert issued.status_code == 201, issued.text
            key = {"x-api-key": issued.json()["key"]}
            # The new key works on the other process once it has caught up (read-your-writes
            # is per process; give it a moment).
            _eventually_ok(two, f"/sessions/{session_id}/status", key)

            revoked = one.delete(
                f"/sessions/{session_id}/keys/{issued.json()['keyId']}", headers=ADMIN
            )
            assert revoked.status_code == 204

            # Check: immediately after the revocation answered, both processes refuse it.
            assert two.get(f"/sessions/{session_id}/status", headers=key).status_code == 401
            assert one.get(f"/sessions/{session_id}/status", headers=key).status_code == 401

        # Check deleting the session revokes its keys everywhere, immediately.
        first_key = key_of(created)
        assert two.get(f"/sessions/{session_id}/status", headers=first_key).status_code == 200
        assert one.delete(f"/sessions/{session_id}", headers=ADMIN).status_code == 204
        assert two.get(f"/sessions/{session_id}/status", headers=first_key).status_code == 401
        assert two.get(f"/sessions/{session_id}", headers=ADMIN).status_code == 404


def _eventually_ok(client: httpx.Client, path: str, headers: dict[str, str]) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if client.get(path, headers=headers).status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered 200")
