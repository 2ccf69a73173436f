"""Messages through real processes (`sessiond serve`: the API and projections in one, the
gateway in its child): texts sent while the session is not connected drain in order once it
connects, and a text sent while the gateway child is dead goes out once it is back."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.steps import gateway_child, scan, send_text, status
from tests.waiting import eventually


def message(client: httpx.Client, created: dict[str, Any], message_id: str) -> dict[str, Any]:
    response = client.get(
        f"/sessions/{created['sessionId']}/messages/{message_id}", headers=key_of(created)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_texts_drain_in_order_on_connect_and_survive_a_gateway_crash(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", {**sessiond_env, "SESSIOND_SEND_INTERVAL": "0.1"})
    with server.client() as client:
        created = create_session(client, "Courier")
        ids = [send_text(client, created, f"parcel {n}")["messageId"] for n in range(3)]
        assert status(client, created)["metrics"]["queueDepth"] == 3
        scan(client, created)

        def all_sent() -> list[dict[str, Any]] | None:
            found = [message(client, created, i) for i in ids]
            return found if all(m["status"] == "sent" for m in found) else None

        sent = eventually(all_sent, what="the queue drained")
        assert [m["sentAt"] for m in sent] == sorted(m["sentAt"] for m in sent)

        os.kill(gateway_child(server), signal.SIGKILL)
        late = send_text(client, created, "sent while the gateway was down")["messageId"]
        assert message(client, created, late)["status"] in ("queued", "sent")
        eventually(
            lambda: message(client, created, late)["status"] == "sent",
            timeout=30,
            what="the text sent by the restarted gateway",
        )
        # The status view is a different projection from the messages view: it catches up on
        # its own, so wait for it rather than assume it moved in step.
        eventually(
            lambda: (
                (
                    (m := status(client, created)["metrics"])["messagesSent"],
                    m["queueDepth"],
                )
                == (4, 0)
            ),
            what="the status view counted the fourth text",
        )
        history = client.get(f"/sessions/{created['sessionId']}/events?limit=1000", headers=ADMIN)
        types = [e["type"] for e in history.json()["items"]]
        assert types.count("MessageSent") == 4
