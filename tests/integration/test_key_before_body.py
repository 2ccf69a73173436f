"""Every route checks the key before it reads anything else: walked from the OpenAPI document,
every operation that names the API-key scheme answers 401 to a request without a key, or with
a wrong one, whatever its body and its query; only the documented public routes answer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import simulate

PUBLIC = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/audit/public-key"),  # a public key: auditors fetch it without a key
}
GARBAGE_BODIES: list[tuple[bytes | None, dict[str, str]]] = [
    (b"{not json", {"content-type": "application/json"}),
    (b'{"surprise": [1, 2, 3], "name": 5, "phone": {}, "url": null}', {}),
    (b"\xff\xfe\x00", {"content-type": "text/plain"}),
    (None, {}),
]
GARBAGE_QUERY = {
    "asOf": "0001-01-01T00:00:00+23:59",
    "from": "yesterday",
    "to": "9999-12-31",
    "bucket": "minute",
    "limit": "-1",
    "after": "x",
    "before": "99999999999999999999999",
    "status": "sleeping",
    "direction": "sideways",
    "label": "no-colon",
}
WRONG_KEYS = ["", "nope", "sdk_" + "0" * 40, "sda_" + "0" * 40, "test-admin-key-012345678"]


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    """This walk sends thousands of refused keys from one address on purpose: the throttle of
    failed authentications (tested on its own) would lock it out after ten."""
    return {"SESSIOND_AUTH_FAILURE_LIMIT": "1000000"}


async def real_ids(api: Api) -> dict[str, str]:
    """Ids of things that exist, so that nothing but the key can stop a request."""
    created = await api.create_session("Walked")
    sid = created["sessionId"]
    await simulate(api, created, "scan")
    message = await api.client.post(
        f"/sessions/{sid}/messages", json={"to": "+14155550123", "text": "hi"}, headers=ADMIN
    )
    assert message.status_code == 202, message.text
    webhook = await api.client.post(
        "/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["session.stopped"]},
        headers=ADMIN,
    )
    assert webhook.status_code == 201, webhook.text
    rule = await api.client.post("/alerts/rules", json={"condition": "silent"}, headers=ADMIN)
    assert rule.status_code == 201, rule.text
    return {
        "session_id": sid,
        "key_id": created["apiKey"]["keyId"],
        "message_id": message.json()["messageId"],
        "webhook_id": webhook.json()["webhookId"],
        "delivery_id": "dlv_" + "0" * 32,
        "rule_id": rule.json()["ruleId"],
    }


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


async def test_every_route_that_needs_a_key_answers_401_before_reading_the_request(
    api: Api,
) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    ids = await real_ids(api)
    walked = operations(document)
    public = {(method, path) for method, path, op in walked if not op.get("security")}
    # Check only the health probes, the metrics and the audit key's public half are public,
    # and nothing else slipped in.
    assert public == PUBLIC
    assert len(walked) >= 39
    assert any(path.startswith("/simulator/") for _, path, _ in walked)

    for method, template, _ in walked:
        path = template.format(**ids)
        for body, headers in GARBAGE_BODIES:
            for key in (None, *WRONG_KEYS):
                sent = dict(headers) if key is None else {**headers, "x-api-key": key}
                answer = await api.client.request(
                    method, path, content=body, headers=sent, params=GARBAGE_QUERY
                )
                where = f"{method} {path} key={key!r} body={body!r}: {answer.text[:300]}"
                assert answer.status_code < 500, where
                if (method, template) in PUBLIC:
                    assert answer.status_code != 401, where
                    continue
                assert answer.status_code == 401, where
                assert answer.headers["content-type"].startswith("application/problem+json")
                assert answer.headers["www-authenticate"] == "ApiKey", where
                assert answer.json()["type"] == "urn:sessiond:problem:unauthorized", where


async def test_an_id_or_a_query_with_a_nul_character_is_a_4xx_on_every_route(api: Api) -> None:
    # PostgreSQL text cannot hold one: without a check first, the lookup itself fails (500).
    document = (await api.client.get("/schema/openapi.json")).json()
    ids = await real_ids(api)
    for method, template, operation in operations(document):
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        for name in names:
            path = template.format(**{**ids, name: "a%00b"})
            answer = await api.client.request(method, path, headers=ADMIN)
            assert answer.status_code == 404, f"{method} {path}: {answer.text[:300]}"
            assert answer.headers["content-type"].startswith("application/problem+json")
        path = template.format(**ids)
        for query in [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]:
            answer = await api.client.request(method, path, headers=ADMIN, params={query: "a\x00"})
            assert answer.status_code == 400, f"{method} {path} {query}: {answer.text[:300]}"
