"""Alert rules on a real `sessiond serve` with the simulator and a quick evaluation: a
session's own rule "not connected for 0 minutes" fires when the phone logs the session out
(a signed ``alert.firing`` webhook, an open alert, ``AlertFired`` in the log) and resolves
when the session is linked again (``alert.resolved``, ``AlertResolved``); another session's
key sees none of it."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.steps import admin_status, register_hook, scan, scan_shown_qr, signed_in, simulate
from tests.receiver import Receiver
from tests.waiting import eventually

HOOK_TYPES = ["alert.firing", "alert.resolved"]


def log_events(client: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        answer = client.get(f"/events?after={after}&limit=1000", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found += page["items"]
        if not page.get("next"):
            return found
        after = int(page["next"])


def hooks(hook: Receiver, kind: str, secret: str) -> list[dict[str, Any]]:
    return [
        body
        for body in (request.verify(secret) for request in list(hook.received))
        if body["type"] == kind
    ]


def open_on_metrics(client: httpx.Client, condition: str) -> float | None:
    """`sessiond_alerts_open{condition=…}` in a scrape of /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "sessiond_alerts_open" and sample.labels == {"condition": condition}:
                return float(sample.value)
    return None


def test_a_disconnection_alert_fires_and_resolves_through_webhooks_and_the_log(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    server: Sessiond = start("serve", {**sessiond_env, "SESSIOND_ALERTS_INTERVAL": "0.2"})
    with server.client() as client:
        secret = register_hook(client, hook, HOOK_TYPES)
        created = create_session(client, "Watched")
        other = create_session(client, "Other")
        sid = created["sessionId"]
        scan(client, created)

        # Check the session's key makes a rule of its own session, and another's key can
        # neither see nor change it.
        made = client.post(
            "/alerts/rules",
            json={"condition": "disconnected", "threshold": 0, "name": "down"},
            headers=key_of(created),
        )
        assert made.status_code == 201, made.text
        rule = made.json()
        assert rule["sessionId"] == sid and rule["open"] == []
        url = f"/alerts/rules/{rule['ruleId']}"
        assert client.get(url, headers=key_of(other)).status_code == 404
        assert client.delete(url, headers=key_of(other)).status_code == 404
        assert client.get("/alerts/rules", headers=key_of(other)).json()["count"] == 0

        # Check nothing fires while the session is connected.
        assert client.get("/alerts", headers=ADMIN).json()["count"] == 0

        # Check the phone logging the session out fires the alert: a signed webhook, an open
        # alert the session's key sees, and AlertFired in the log.
        simulate(client, created, "logout")
        fired = hook.wait_for(lambda _: hooks(hook, "alert.firing", secret), timeout=60)
        (firing,) = fired
        assert firing["data"]["sessionId"] == sid
        assert firing["data"]["ruleId"] == rule["ruleId"]
        assert firing["data"]["condition"] == "disconnected"
        assert firing["data"]["threshold"] == 0
        open_now = client.get("/alerts", headers=key_of(created)).json()
        assert [a["ruleId"] for a in open_now["items"]] == [rule["ruleId"]]
        assert client.get("/alerts", headers=key_of(other)).json()["count"] == 0
        assert client.get(url, headers=key_of(created)).json()["open"][0]["subject"] == sid

        # Check the dashboard's bell counts it and links to the session.
        dashboard = signed_in(server)
        link = f'<a href="/dashboard/sessions/{sid}">{sid}</a>'  # the bell's, not the list's
        eventually(
            lambda: (
                'data-alerts="1"' in (page := dashboard.get("/dashboard/").text) and link in page
            ),
            what="the bell showing the alert",
        )
        # ... and /metrics counts it by condition (for Prometheus's rules).
        eventually(
            lambda: open_on_metrics(client, "disconnected") == 1.0,
            what="/metrics counting the open alert",
        )

        # Check it stays one alert while the session stays down, through an operator's
        # reconnect that shows QR codes again (no re-firing).
        reconnect = client.post(f"/sessions/{sid}/reconnect", headers=key_of(created))
        assert reconnect.status_code == 200, reconnect.text
        eventually(
            lambda: admin_status(client, created)["status"] == "connecting",
            what="the session showing QR codes again",
        )
        assert len(hooks(hook, "alert.firing", secret)) == 1

        # Check linking the session again resolves it.
        assert scan_shown_qr(client, created)["status"] == "connected"
        resolved = hook.wait_for(lambda _: hooks(hook, "alert.resolved", secret), timeout=60)
        (clearing,) = resolved
        assert clearing["data"]["sessionId"] == sid
        assert clearing["data"]["cause"] == "cleared"
        assert clearing["data"]["firedAt"] == firing["data"]["firedAt"]
        assert client.get("/alerts", headers=ADMIN).json()["count"] == 0
        assert len(hooks(hook, "alert.firing", secret)) == 1
        eventually(
            lambda: 'data-alerts="0"' in dashboard.get("/dashboard/").text,
            what="the bell with no alert",
        )
        eventually(
            lambda: open_on_metrics(client, "disconnected") == 0.0,
            what="/metrics with no open alert",
        )

        # Check the log shows when it fired and when it cleared, about the session.
        events = log_events(client)
        alerts = [e for e in events if e["type"] in ("AlertFired", "AlertResolved")]
        assert [e["type"] for e in alerts] == ["AlertFired", "AlertResolved"]
        assert {e["sessionId"] for e in alerts} == {sid}
        assert alerts[0]["timestamp"] < alerts[1]["timestamp"]
        # And the rule's own history, which its session's key reads (another's cannot).
        own = client.get(f"{url}/events", headers=key_of(created))
        assert own.status_code == 200, own.text
        assert [e["type"] for e in own.json()["items"]] == [
            "AlertRuleCreated",
            "AlertFired",
            "AlertResolved",
        ]
        assert client.get(f"{url}/events", headers=key_of(other)).status_code == 404
