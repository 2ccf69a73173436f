"""Alert rules evaluated by the worker role on a real PostgreSQL: the facts come from the
views (failed messages within a window, a webhook endpoint's failures in a row, a session's
quota from its recorded sends), and each rule fires once for what it watches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.postgres.alerts import PostgresAlertSources
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually, send, simulate, until_status


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_ALERTS_INTERVAL": "0.2", "SESSIOND_SEND_INTERVAL": "0"}


async def rule(api: Api, **body: Any) -> str:
    answer = await api.client.post("/alerts/rules", json=body, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["ruleId"])


async def test_failed_messages_a_failing_endpoint_and_a_low_quota_fire_their_rules(
    api: Api,
) -> None:
    created = await api.create_session("Troubled")
    sid = created["sessionId"]
    quota = await api.client.put(
        f"/sessions/{sid}/sending", json={"messagesPerHour": 4}, headers=ADMIN
    )
    assert quota.status_code == 200, quota.text
    # Nothing listens on port 9: every delivery to it fails.
    hook = await api.client.post(
        "/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["message.sent"], "sessionId": sid},
        headers=ADMIN,
    )
    assert hook.status_code == 201, hook.text
    webhook_id = hook.json()["webhookId"]
    bad = (await send(api, created, "to nobody", to="0123456@s.whatsapp.net")).json()
    good = [(await send(api, created, f"hi {n}")).json() for n in range(2)]
    await simulate(api, created, "scan")
    await until_status(api, created, bad["messageId"], "failed")
    for message in good:
        await until_status(api, created, message["messageId"], "sent")

    # Check the facts as the views hold them.
    container = api.container
    sources = PostgresAlertSources(
        container.app,
        container.views,
        container.app.factory.datastore,  # type: ignore[attr-defined]
    )
    now = datetime.now(UTC)

    async def endpoint_failing() -> bool:
        facts = await asyncio.to_thread(sources.facts, now)
        found = [e for e in facts.endpoints if e.webhook_id == webhook_id]
        return bool(found) and found[0].consecutive_failures >= 1

    await eventually(endpoint_failing)
    facts = sources.facts(now)
    assert facts.failed_since(sid, now - timedelta(minutes=5)) == 1
    assert facts.failed_since(sid, now + timedelta(minutes=1)) == 0
    assert facts.quota_left(sid) == 50  # 2 of 4 sent this hour

    # Check each rule fires once for it.
    failing = await rule(api, condition="messages_failing", threshold=1, windowMinutes=5)
    webhook = await rule(api, condition="webhook_failing", threshold=1)
    low = await rule(api, condition="quota_low", threshold=60)
    calm = await rule(api, condition="queue_depth", threshold=5)

    async def open_rules() -> dict[str, list[str]]:
        items = (await api.client.get("/alerts", headers=ADMIN)).json()["items"]
        found: dict[str, list[str]] = {}
        for item in items:
            found.setdefault(item["ruleId"], []).append(item["subject"])
        return found

    async def all_open() -> dict[str, list[str]] | None:
        found = await open_rules()
        return found if {failing, webhook, low} <= found.keys() else None

    found = await eventually(all_open)
    assert found[failing] == [sid] and found[low] == [sid]
    assert found[webhook] == [webhook_id]
    assert calm not in found
