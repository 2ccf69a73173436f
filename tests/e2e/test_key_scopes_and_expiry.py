"""Scoped, expiring keys on real processes: a key without a scope is refused naming it, on the
status fast path too; a key never creates a wider or longer-lived key; the OpenAPI document
names each route's scope; and an expired key is refused by every API process from its expiry
on, with no worker running to record the expiry (the time is compared at each check), which
a worker then records once."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.streams import data, reading

MESSAGE = {"to": "+14155550123", "text": "hello"}


def issue(client: httpx.Client, session_id: str, headers: Any, **body: Any) -> httpx.Response:
    return client.post(f"/sessions/{session_id}/keys", json=body, headers=headers)


def header(answer: httpx.Response) -> dict[str, str]:
    assert answer.status_code == 201, answer.text
    return {"x-api-key": answer.json()["key"]}


def expired_events(client: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/sessions/{session_id}/events", headers=ADMIN)
    assert page.status_code == 200, page.text
    return [e for e in page.json()["items"] if e["type"] == "ApiKeyExpired"]


def test_a_key_does_only_what_its_scopes_allow_and_never_gives_more(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        created = create_session(client, "Scoped")
        sid = created["sessionId"]
        reader = header(issue(client, sid, ADMIN, label="reader", scopes=["status:read"]))

        # Check the status fast path serves it, and sending is 403 naming messages:send.
        status = client.get(f"/sessions/{sid}/status", headers=reader)
        assert status.status_code == 200 and status.json()["sessionId"] == sid
        sent = client.post(f"/sessions/{sid}/messages", json=MESSAGE, headers=reader)
        assert sent.status_code == 403, sent.text
        assert sent.headers["content-type"].startswith("application/problem+json")
        problem = sent.json()
        assert problem["type"] == "urn:sessiond:problem:scope-missing"
        assert problem["requiredScope"] == "messages:send"
        assert "messages:send" in problem["detail"]
        # ... before its body is read: a garbage body gets the same 403.
        garbage = client.post(f"/sessions/{sid}/messages", content=b"{not json", headers={**reader})
        assert garbage.status_code == 403 and garbage.json()["requiredScope"] == "messages:send"

        # Check a sender without status:read is refused on the fast path, naming it.
        sender = header(issue(client, sid, key_of(created), scopes=["messages:send"]))
        assert (
            client.post(f"/sessions/{sid}/messages", json=MESSAGE, headers=sender).status_code
            == 202
        )
        no_status = client.get(f"/sessions/{sid}/status", headers=sender)
        assert no_status.status_code == 403 and no_status.json()["requiredScope"] == "status:read"

        # Check escalation is refused: a manager of keys with an expiry gives no scope it lacks,
        # no full access and no later expiry; it gives what it holds.
        manager = header(
            issue(client, sid, ADMIN, scopes=["keys:manage", "status:read"], ttlSeconds=3600)
        )
        for body in (
            {"scopes": ["messages:send"], "ttlSeconds": 60},
            {"ttlSeconds": 60},
            {"scopes": ["status:read"]},
            {"scopes": ["status:read"], "ttlSeconds": 7200},
        ):
            refused = issue(client, sid, manager, **body)
            assert refused.status_code == 403, (body, refused.text)
            assert refused.json()["type"] == "urn:sessiond:problem:key-exceeds-issuer"
        given = issue(client, sid, manager, scopes=["status:read"], ttlSeconds=60)
        assert given.status_code == 201 and given.json()["scopes"] == ["status:read"]
        assert client.get(f"/sessions/{sid}/status", headers=header(given)).status_code == 200

        # Check the OpenAPI document lists each route's scope.
        document = client.get("/schema/openapi.json").json()
        operations = {
            op["operationId"]: op
            for item in document["paths"].values()
            for op in item.values()
            if isinstance(op, dict) and "operationId" in op
        }
        send = operations["sendMessage"]
        assert send["x-required-scope"] == "messages:send"
        assert send["security"] == [{"apiKey": ["messages:send"]}]
        assert operations["getSessionStatus"]["x-required-scope"] == "status:read"
        assert operations["createSessionKey"]["x-required-scope"] == "keys:manage"
        assert all("x-required-scope" in op for op in operations.values() if op.get("security"))

        # Check an event stream needs status:read, and ends with key-expired at the expiry.
        stream_path = f"/sessions/{sid}/events/stream"
        with reading(server, stream_path, sender) as refused_stream:
            assert refused_stream.response.status_code == 403
        # Long enough that the stream opens before the expiry though the answer waited for
        # the views to settle, which can take a while on a loaded machine.
        issued = issue(client, sid, ADMIN, scopes=["status:read"], ttlSeconds=5)
        expiring = header(issued)
        expires_at = datetime.fromisoformat(issued.json()["expiresAt"])
        with reading(server, stream_path, expiring) as stream:
            assert stream.response.status_code == 200
            due = time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds()
            ended = stream.wait_end(15)
            assert due - 0.1 <= ended < due + 1.0, ended - due
            last = stream.events[-1]
            assert last.event == "end" and data(last)["reason"] == "key-expired"


def test_an_expired_key_is_refused_by_every_api_process_before_any_worker_records_it(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    # Expired keys are sent on purpose, more than ten a minute from this address.
    env = {**sessiond_env, "SESSIOND_AUTH_FAILURE_LIMIT": "1000"}
    one, two = start("api", env), start("api", env)
    start("projector", env)  # no worker: nothing records the expiry until one starts
    with one.client() as first, two.client() as second:
        created = create_session(first, "Expiring")
        sid = created["sessionId"]
        issued = issue(first, sid, ADMIN, label="short", ttlSeconds=4)
        short = header(issued)
        expires_at = datetime.fromisoformat(issued.json()["expiresAt"])
        key_id = issued.json()["keyId"]

        # Check it works on both processes before its expiry (the answer waited for both).
        for client in (first, second):
            assert client.get(f"/sessions/{sid}/status", headers=short).status_code == 200
            assert client.get(f"/sessions/{sid}", headers=short).status_code == 200

        # Check from its expiry on, both refuse it (401) on the fast path and every route.
        time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
        for client in (first, second):
            for method, path, body in [
                ("GET", f"/sessions/{sid}/status", None),
                ("GET", f"/sessions/{sid}", None),
                ("GET", f"/sessions/{sid}/events", None),
                ("POST", f"/sessions/{sid}/messages", MESSAGE),
                ("POST", f"/sessions/{sid}/reconnect", None),
                ("GET", f"/sessions/{sid}/keys", None),
                ("GET", "/webhooks", None),
            ]:
                answer = client.request(method, path, json=body, headers=short)
                assert answer.status_code == 401, (method, path, answer.text)
                assert "expired" in answer.json()["detail"]
            # The session's other key is untouched.
            assert client.get(f"/sessions/{sid}/status", headers=key_of(created)).status_code == 200

        # Check nothing recorded the expiry (no worker runs), and the list says it expired.
        assert expired_events(first, sid) == []
        listed = first.get(f"/sessions/{sid}/keys", headers=ADMIN).json()["items"]
        item = next(i for i in listed if i["keyId"] == key_id)
        assert (item["active"], item["expired"]) == (False, True)

        # Check two workers started now record ApiKeyExpired once between them.
        start("worker", env)
        start("worker", env)
        deadline = time.monotonic() + 30
        while not expired_events(first, sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # several ticks of both workers more
        (expired,) = expired_events(first, sid)
        assert expired["data"]["key_id"] == key_id
        assert second.get(f"/sessions/{sid}/status", headers=short).status_code == 401
