"""The alert rules' routes on the in-process app and a real PostgreSQL: bad input is a 422
problem naming the field, the key is checked before the body, a session key reaches its own
session's rules and alerts only (another's answer 404), and its scopes are the table's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api

RULES = "/alerts/rules"


def problem(answer: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    where = f"{answer.request.method} {answer.request.url.path}: {answer.text}"
    assert answer.status_code == status, where
    assert answer.headers["content-type"].startswith("application/problem+json"), where
    body: dict[str, Any] = answer.json()
    if kind is not None:
        assert body["type"] == f"urn:sessiond:problem:{kind}", where
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condition": "disconnected"}, "threshold"),
        ({"condition": "silent", "threshold": 3}, "threshold"),
        ({"condition": "quota_low", "threshold": 150}, "threshold"),
        ({"condition": "queue_depth", "threshold": 5, "windowMinutes": 10}, "windowMinutes"),
        ({"condition": "restricted", "kind": "sleepy"}, "kind"),
        ({"condition": "silent", "kind": "logged_out"}, "kind"),
    ],
)
async def test_a_rule_that_does_not_hold_together_is_a_422_naming_its_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    found = problem(await api.client.post(RULES, json=body, headers=ADMIN), 422)
    assert found["field"] == field
    assert found["detail"].startswith(f"{field}:")
    assert (await api.client.get(RULES, headers=ADMIN)).json()["count"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"condition": "sleeping"},
        {"condition": "queue_depth", "threshold": -1},
        {"condition": "messages_failing", "threshold": 2, "windowMinutes": 0},
        {"condition": "silent", "surprise": 1},
        {"condition": "silent", "name": ""},
        {"condition": "silent", "sessionId": "nope"},
        {},
    ],
)
async def test_a_body_that_does_not_fit_the_schema_is_a_422(api: Api, body: dict[str, Any]) -> None:
    problem(await api.client.post(RULES, json=body, headers=ADMIN), 422, "invalid-request")


async def test_malformed_json_is_a_400_and_no_key_a_401_whatever_the_body(api: Api) -> None:
    malformed = await api.client.post(
        RULES, content=b"{nope", headers={**ADMIN, "content-type": "application/json"}
    )
    problem(malformed, 400, "malformed-json")
    for body in (b"{nope", b'{"condition": 5}', b""):
        for headers in ({}, {"x-api-key": "wrong"}):
            answer = await api.client.post(RULES, content=body, headers=headers)
            problem(answer, 401, "unauthorized")


async def test_a_session_key_manages_its_own_session_s_rules_only(api: Api) -> None:
    mine, theirs = await api.create_session("Mine"), await api.create_session("Theirs")
    my_key, their_key = api.key(mine), api.key(theirs)

    # Check a session key's rule is its own session's, and it cannot name another session.
    made = await api.client.post(
        RULES, json={"condition": "queue_depth", "threshold": 50}, headers=my_key
    )
    assert made.status_code == 201, made.text
    rule = made.json()
    assert rule["sessionId"] == mine["sessionId"] and rule["name"] == "queue_depth"
    elsewhere = {"condition": "silent", "sessionId": theirs["sessionId"]}
    problem(await api.client.post(RULES, json=elsewhere, headers=my_key), 404)

    # Check another session's key and the deployment's rules stay out of reach (404).
    url = f"{RULES}/{rule['ruleId']}"
    problem(await api.client.get(url, headers=their_key), 404, "alert-rule-not-found")
    problem(await api.client.get(url + "/events", headers=their_key), 404)
    problem(
        await api.client.patch(url, json={"threshold": 1}, headers=their_key),
        404,
        "alert-rule-not-found",
    )
    problem(await api.client.delete(url, headers=their_key), 404, "alert-rule-not-found")
    deployment = await api.client.post(RULES, json={"condition": "silent"}, headers=ADMIN)
    assert deployment.status_code == 201 and deployment.json()["sessionId"] is None
    hidden = f"{RULES}/{deployment.json()['ruleId']}"
    problem(await api.client.get(hidden, headers=my_key), 404, "alert-rule-not-found")
    for unknown in ("alr_" + "0" * 32, "alr_nope", "wh_" + "0" * 32):
        problem(await api.client.get(f"{RULES}/{unknown}", headers=ADMIN), 404)
        problem(await api.client.get(f"{RULES}/{unknown}/events", headers=ADMIN), 404)

    # Check each key lists its own, the admin every rule.
    listed = (await api.client.get(RULES, headers=my_key)).json()
    assert [r["ruleId"] for r in listed["items"]] == [rule["ruleId"]]
    assert (await api.client.get(RULES, headers=their_key)).json()["count"] == 0
    assert (await api.client.get(RULES, headers=ADMIN)).json()["count"] == 2
    assert (await api.client.get("/alerts", headers=my_key)).json() == {"items": [], "count": 0}

    # Check a change is answered with the rule as changed, and null clears only what may be.
    changed = await api.client.patch(
        url, json={"threshold": 7, "name": "deep", "enabled": False}, headers=my_key
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["threshold"], changed.json()["name"]) == (7, "deep")
    assert changed.json()["enabled"] is False
    cleared = await api.client.patch(url, json={"threshold": None}, headers=my_key)
    assert problem(cleared, 422)["field"] == "threshold"
    problem(await api.client.patch(url, json={"name": None}, headers=my_key), 422)
    problem(await api.client.patch(url, json={"open": []}, headers=my_key), 422)

    # Check a deleted rule is gone for everyone.
    assert (await api.client.delete(url, headers=my_key)).status_code == 204
    problem(await api.client.get(url, headers=ADMIN), 404, "alert-rule-not-found")
    problem(await api.client.delete(url, headers=my_key), 404, "alert-rule-not-found")


async def test_a_key_without_webhooks_manage_reads_rules_but_cannot_make_them(api: Api) -> None:
    created = await api.create_session("Scoped")
    sid = created["sessionId"]
    answer = await api.client.post(
        f"/sessions/{sid}/keys", json={"scopes": ["status:read"]}, headers=api.key(created)
    )
    assert answer.status_code == 201, answer.text
    reader = {"x-api-key": answer.json()["key"]}
    refused = await api.client.post(RULES, json={"condition": "silent"}, headers=reader)
    problem(refused, 403)
    assert (await api.client.get(RULES, headers=reader)).status_code == 200
    assert (await api.client.get("/alerts", headers=reader)).status_code == 200
