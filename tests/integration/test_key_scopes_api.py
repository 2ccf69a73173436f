"""Scoped, expiring keys over HTTP: each route refuses a key without its scope (403 naming
it), bad terms are 422 with nothing recorded, a key never creates a wider or longer-lived
one, an expired key is 401 everywhere and its expiry is recorded, and the OpenAPI document
names every route's scope."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from api.scopes import ADMIN_ONLY, ROUTE_SCOPES
from domain.access import SCOPES
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually

MESSAGE = {"to": "+14155550123", "text": "hi"}


async def new_key(api: Api, session_id: str, headers: dict[str, str], **body: Any) -> Any:
    return await api.client.post(f"/sessions/{session_id}/keys", json=body, headers=headers)


async def recorded(api: Api, session_id: str) -> list[str]:
    """The types of the session's events, but the QR codes its worker records meanwhile."""
    page = await api.client.get(f"/sessions/{session_id}/events", headers=ADMIN)
    return [e["type"] for e in page.json()["items"] if e["type"] != "QRIssued"]


def key_header(answer: Any) -> dict[str, str]:
    assert answer.status_code == 201, answer.text
    return {"x-api-key": answer.json()["key"]}


def scope_missing(answer: Any, scope: str) -> None:
    where = f"{answer.request.method} {answer.request.url.path}: {answer.text}"
    assert answer.status_code == 403, where
    assert answer.headers["content-type"].startswith("application/problem+json"), where
    problem = answer.json()
    assert problem["type"] == "urn:sessiond:problem:scope-missing", where
    assert problem["requiredScope"] == scope, where
    assert scope in problem["detail"], where


async def test_a_key_reaches_only_the_routes_of_its_scopes(api: Api) -> None:
    created = await api.create_session("Scoped")
    sid = created["sessionId"]
    other = await api.create_session("Other")
    reader = key_header(await new_key(api, sid, ADMIN, label="reader", scopes=["status:read"]))
    base = f"/sessions/{sid}"

    # Check what status:read covers answers as for a full key.
    for path in ("/status", "", "/events", "/uptime", "/proxy"):
        answer = await api.client.get(base + path, headers=reader)
        assert answer.status_code == 200, (path, answer.text)
    qr = await api.client.get(base + "/qr", headers=reader)
    assert qr.status_code in (200, 409), qr.text  # 409: no QR code shown yet

    # Check every other scope's routes answer 403 naming the scope, and record nothing.
    before = await recorded(api, sid)
    c = api.client
    scope_missing(await c.post(base + "/messages", json=MESSAGE, headers=reader), "messages:send")
    scope_missing(await c.get(base + "/messages", headers=reader), "messages:read")
    scope_missing(await c.get(base + "/messages/msg_x", headers=reader), "messages:read")
    scope_missing(await c.post(base + "/reconnect", headers=reader), "session:control")
    scope_missing(await c.post(base + "/stop", headers=reader), "session:control")
    scope_missing(
        await c.post(base + "/pair-code", json={"phone": "+14155550123"}, headers=reader),
        "session:control",
    )
    scope_missing(
        await c.put(base + "/proxy", json={"url": "socks5://p.example.com:1080"}, headers=reader),
        "session:control",
    )
    scope_missing(await c.get(base + "/keys", headers=reader), "keys:manage")
    scope_missing(await new_key(api, sid, reader, scopes=["status:read"]), "keys:manage")
    scope_missing(await c.get("/webhooks", headers=reader), "webhooks:manage")
    scope_missing(
        await c.post("/webhooks", json={"url": "https://example.com/h"}, headers=reader),
        "webhooks:manage",
    )
    assert await recorded(api, sid) == before
    # An OPTIONS request names no operation: it answers as for any key.
    options = await c.options(base + "/messages", headers=reader)
    assert options.status_code in (200, 204), options.text

    # Check another session's routes still answer 404 (existence is never revealed), and
    # admin-only routes 403 admin-only, as for a full key.
    missing = await c.post(f"/sessions/{other['sessionId']}/messages", json=MESSAGE, headers=reader)
    assert missing.status_code == 404
    admin_only = await c.delete(base, headers=reader)
    assert admin_only.status_code == 403
    assert admin_only.json()["type"] == "urn:sessiond:problem:admin-only"

    # Check a sender sends and cannot read, and the first key (no scopes) does everything.
    sender = key_header(await new_key(api, sid, ADMIN, scopes=["messages:send"]))
    sent = await c.post(base + "/messages", json=MESSAGE, headers=sender)
    assert sent.status_code == 202, sent.text
    scope_missing(await c.get(base + "/status", headers=sender), "status:read")
    full = api.key(created)
    assert (await c.get(base + "/messages", headers=full)).status_code == 200
    assert (await c.get(base + "/keys", headers=full)).status_code == 200


async def test_bad_key_terms_are_refused_with_422_and_nothing_recorded(api: Api) -> None:
    created = await api.create_session("Terms")
    sid = created["sessionId"]
    before = await recorded(api, sid)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"scopes": ["status:read", "messages:delete"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": "status:read"}, "scopes"),
        ({"ttlSeconds": -5}, "ttlSeconds"),
        ({"ttlSeconds": 0}, "ttlSeconds"),
        ({"ttlSeconds": 1.5}, "ttlSeconds"),
        ({"expiresAt": past}, "not in the future"),
        ({"expiresAt": "2026-12-31T12:00:00"}, "expiresAt"),
        ({"expiresAt": future, "ttlSeconds": 60}, "not both"),
        ({"expiresAt": "tomorrow"}, "expiresAt"),
    ]
    for body, words in cases:
        answer = await new_key(api, sid, api.key(created), **body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert words in answer.json()["detail"], (body, answer.text)
    assert await recorded(api, sid) == before

    # Check an expiry an offset puts beyond the calendar is its last instant (no overflow).
    far = await new_key(api, sid, ADMIN, expiresAt="9999-12-31T23:59:59-23:59")
    assert far.status_code == 201, far.text
    assert far.json()["expiresAt"].startswith("9999-12-31T23:59:59.999999")
    works = await api.client.get(f"/sessions/{sid}/status", headers=key_header(far))
    assert works.status_code == 200

    # Check the key comes first: a bad body without a valid key is 401.
    unkeyed = await api.client.post(f"/sessions/{sid}/keys", json={"ttlSeconds": -5})
    assert unkeyed.status_code == 401


async def test_a_key_never_creates_a_key_with_more_scopes_or_a_later_expiry(api: Api) -> None:
    created = await api.create_session("Escalation")
    sid = created["sessionId"]
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    later = (in_an_hour + timedelta(seconds=1)).isoformat()
    manager_answer = await new_key(
        api,
        sid,
        ADMIN,
        scopes=["keys:manage", "status:read"],
        expiresAt=in_an_hour.isoformat(),
    )
    manager = key_header(manager_answer)
    before = await recorded(api, sid)

    cases: list[tuple[dict[str, Any], str]] = [
        ({"scopes": ["keys:manage", "messages:send"], "ttlSeconds": 60}, "messages:send"),
        ({"ttlSeconds": 60}, "full access"),
        ({"scopes": ["status:read"]}, "never expires"),
        ({"scopes": ["status:read"], "expiresAt": later}, "expires later"),
        ({"scopes": ["status:read"], "ttlSeconds": 7200}, "expires later"),
    ]
    for body, words in cases:
        answer = await new_key(api, sid, manager, **body)
        assert answer.status_code == 403, (body, answer.text)
        assert answer.json()["type"] == "urn:sessiond:problem:key-exceeds-issuer"
        assert words in answer.json()["detail"], (body, answer.text)
    assert await recorded(api, sid) == before

    # Check what it holds, or less, it may give; and the new key holds exactly that.
    narrower = await new_key(api, sid, manager, scopes=["status:read"], ttlSeconds=600)
    assert narrower.status_code == 201, narrower.text
    assert narrower.json()["scopes"] == ["status:read"]
    same = await new_key(
        api, sid, manager, scopes=["status:read", "keys:manage"], expiresAt=in_an_hour.isoformat()
    )
    assert same.status_code == 201, same.text
    listed = (await api.client.get(f"/sessions/{sid}/keys", headers=manager)).json()["items"]
    by_id = {item["keyId"]: item for item in listed}
    assert by_id[narrower.json()["keyId"]]["scopes"] == ["status:read"]
    assert by_id[manager_answer.json()["keyId"]]["scopes"] == ["status:read", "keys:manage"]
    assert by_id[created["apiKey"]["keyId"]]["scopes"] is None
    assert by_id[created["apiKey"]["keyId"]]["expiresAt"] is None


async def test_an_expired_key_is_refused_everywhere_and_its_expiry_recorded(api: Api) -> None:
    created = await api.create_session("Expiry")
    sid = created["sessionId"]
    # The expiry is counted from when the key was made; the answer comes once the views have
    # it, which can take a while on a loaded machine: bound it by the times either side.
    ttl = timedelta(seconds=5)
    before = datetime.now(UTC)
    answer = await new_key(api, sid, ADMIN, label="short", ttlSeconds=int(ttl.total_seconds()))
    after = datetime.now(UTC)
    short = key_header(answer)
    expires_at = datetime.fromisoformat(answer.json()["expiresAt"])
    assert before + ttl <= expires_at <= after + ttl, (before, expires_at, after)
    works = await api.client.get(f"/sessions/{sid}/status", headers=short)
    assert works.status_code == 200, (works.text, datetime.now(UTC), expires_at)

    # Check from its expiry on it is 401 on the status fast path and every other route.
    await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
    base = f"/sessions/{sid}"
    c = api.client
    for answer in [
        await c.get(base + "/status", headers=short),
        await c.get(base, headers=short),
        await c.get(base + "/events", headers=short),
        await c.post(base + "/messages", json=MESSAGE, headers=short),
        await c.get(base + "/keys", headers=short),
        await c.get("/webhooks", headers=short),
    ]:
        assert answer.status_code == 401, answer.text
        assert "expired" in answer.json()["detail"]

    # Check ApiKeyExpired is recorded (by the worker), once, and the list shows it.
    listed = (await c.get(base + "/keys", headers=ADMIN)).json()["items"]
    key_id = next(i["keyId"] for i in listed if i["label"] == "short")

    async def expiry_recorded() -> list[dict[str, Any]]:
        events = (await c.get(base + "/events", headers=ADMIN)).json()["items"]
        return [e for e in events if e["type"] == "ApiKeyExpired"]

    expired = await eventually(expiry_recorded)
    assert len(expired) == 1, expired
    assert expired[0]["data"]["key_id"] == key_id
    listed = (await c.get(base + "/keys", headers=ADMIN)).json()["items"]
    item = next(i for i in listed if i["keyId"] == key_id)
    assert (item["active"], item["expired"], item["revokedAt"]) == (False, True, None)


async def test_the_openapi_document_names_every_routes_scope(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    seen: dict[str, str] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            if not operation.get("security"):
                assert "x-required-scope" not in operation, (method, path)
                continue
            scope = operation["x-required-scope"]
            seen[operation["operationId"]] = scope
            assert operation["security"] == [{"apiKey": [scope]}], (method, path)
            assert f"`{scope}`" in operation["description"], (method, path)
            assert "403" in operation["responses"], (method, path)
    # Check the table and the document agree, every scope is used, and the examples hold.
    assert seen == {name: str(scope) for name, scope in ROUTE_SCOPES.items()}
    assert set(seen.values()) == {*SCOPES, ADMIN_ONLY}
    assert seen["sendMessage"] == "messages:send"
    assert seen["getSessionStatus"] == "status:read"
    assert seen["deleteSession"] == ADMIN_ONLY
    create_in = document["components"]["schemas"]["CreateKeyIn"]["properties"]
    assert {"scopes", "expiresAt", "ttlSeconds"} <= create_in.keys()
