"""Webhooks through real processes: the gateway child of `sessiond serve` (which delivers
webhooks) is killed with SIGKILL while a delivery is in flight; its restarted successor
delivers it, with the same webhook-id, and nothing is lost."""

from __future__ import annotations

import os
import signal
from typing import Any

from tests.e2e.conftest import ADMIN, create_session
from tests.e2e.steps import gateway_child
from tests.receiver import Answer, Receiver
from tests.waiting import eventually


def test_a_worker_killed_mid_delivery_loses_nothing(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "only",
        "SESSIOND_WEBHOOK_CLAIM_HOLD": "2",
    }
    server = start("serve", env)
    hook.script = [Answer(200, delay=30)]  # the first delivery hangs: the worker is killed
    with server.client() as client:
        response = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.created", "session.stopped"]},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        webhook = response.json()
        first = create_session(client, "In flight")
        hook.wait_for(lambda received: received, timeout=20)  # the delivery is in flight
        os.kill(gateway_child(server), signal.SIGKILL)
        second = create_session(client, "While down")
        client.post(f"/sessions/{first['sessionId']}/stop", headers=ADMIN)

        def everything(received: list[Any]) -> set[str] | None:
            ids = {r.headers["webhook-id"] for r in received}
            return ids if len(ids) == 3 else None

        ids = hook.wait_for(everything, timeout=40)

        def all_delivered() -> bool:
            page = client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
            items = page.json()["items"]
            return len(items) == 3 and all(d["status"] == "delivered" for d in items)

        eventually(all_delivered, timeout=40, what="every delivery marked delivered")
        created = [r for r in hook.received if r.json["type"] == "session.created"]
        assert {r.json["data"]["sessionId"] for r in created} == {
            first["sessionId"],
            second["sessionId"],
        }
        in_flight = hook.received[0].headers["webhook-id"]
        # Sent again by the restarted worker once the dead one's claim expired, same id.
        assert [r.headers["webhook-id"] for r in hook.received].count(in_flight) == 2
        for request in hook.received:
            request.verify(webhook["secret"])
        assert len(ids) == 3
