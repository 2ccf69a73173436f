"""`sessiond serve` with the real gateway (neonize) on a machine that cannot reach WhatsApp.

Nothing leaves the machine: whatsmeow dials through the HTTPS proxy named in the environment,
and the proxy named here is a closed port on 127.0.0.1, so every dial is refused locally.
The session must say why it is not connected, and keep retrying; nothing may crash or hang.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tests.e2e.conftest import ADMIN, create_session, free_port, key_of
from tests.e2e.steps import highest_position


def test_a_new_session_that_cannot_reach_whatsapp_says_so_and_retries(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        **sessiond_env,
        "SESSIOND_GATEWAY": "neonize",
        "SESSIOND_RETRY_BASE": "0.3",
        "SESSIOND_RETRY_CAP": "1",
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    server = start("serve", env)
    with server.client() as client:
        created = create_session(client, "Offline")
        url = f"/sessions/{created['sessionId']}"

        def status() -> dict[str, Any]:
            response = client.get(url + "/status", headers=key_of(created))
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        deadline = time.monotonic() + 60
        body = status()
        while time.monotonic() < deadline and body["retryAttempt"] < 3:
            time.sleep(0.1)
            body = status()

        # Check the status says why, with the library's own words, and when it tries again.
        assert body["status"] in ("disconnected", "connecting"), body
        assert body["retryAttempt"] >= 3, body
        session = client.get(url, headers=ADMIN).json()
        assert session["reason"] in ("whatsapp_unreachable", None), session
        failing = status()
        while failing["status"] != "disconnected":
            time.sleep(0.05)
            failing = status()
        assert failing["reason"] == "whatsapp_unreachable"
        assert failing["health"] == "unhealthy"
        assert failing["nextRetryAt"] is not None
        assert "127.0.0.1" in failing["detail"], failing  # the dial went to the local proxy

        # Check no QR code is offered, with the reason, and the service stays healthy.
        qr = client.get(url + "/qr", headers=key_of(created))
        assert qr.status_code == 409 and "whatsapp_unreachable" in qr.json()["detail"]
        assert client.get("/health/ready").status_code == 200

        # Check a stop ends the retries, and is recorded.
        stopped = client.post(url + "/stop", headers=key_of(created))
        assert stopped.json()["reason"] == "stopped"
        # Once the gateway view has taken the stop in, no retry is due: none can come.
        database_url = sessiond_env["SESSIOND_DATABASE_URL"]
        deadline = time.monotonic() + 30
        while highest_position(database_url, "gateway_tracking") < highest_position(
            database_url, "sessiond_events"
        ):
            assert time.monotonic() < deadline, "the gateway view never took the stop in"
            time.sleep(0.05)
        assert "retry" not in _deadlines(database_url, created["sessionId"])
        after = status()
        assert after["health"] == "stopped" and after["nextRetryAt"] is None
        assert after["updatedAt"] == stopped.json()["updatedAt"]  # nothing recorded since
    log = server.full_log()
    assert "panic" not in log and "Traceback" not in log, log


def _deadlines(database_url: str, session_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kind FROM sessiond_deadlines WHERE session_id = %s",
            (session_id.removeprefix("sess_"),),
        ).fetchall()
    return [row[0] for row in rows]
