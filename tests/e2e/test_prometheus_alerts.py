"""The Prometheus rules against a real `sessiond serve` (simulator gateway): two scrapes of its
`/metrics` over HTTP — before and after a session goes silent, one's keepalives fail, one is
banned with more than 100 messages queued, and one's messages fail — fed to `promtool test
rules` fire exactly the alerts those states call for, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Sessiond, create_session
from tests.e2e.steps import scan, simulate
from tests.promtool import Sample, check_alerts, expected, samples_of, value
from tests.waiting import eventually

FRIEND = "+4915112345678"
NOBODY = "0123456@s.whatsapp.net"  # the simulator refuses to send to it


def scrape(client: httpx.Client) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return samples_of(response.text)


def queue(client: httpx.Client, created: dict[str, Any], to: str, count: int) -> None:
    for n in range(count):
        response = client.post(
            f"/sessions/{created['sessionId']}/messages",
            json={"to": to, "text": f"message {n}"},
            headers=ADMIN,
        )
        assert response.status_code == 202, response.text


def test_a_real_server_s_scrapes_fire_the_alerts_its_states_call_for(
    start: Any, sessiond_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_SILENCE_AFTER": "2",
        "SESSIOND_SILENCE_CHECK_TIMEOUT": "120",  # silent while the test looks
    }
    server: Sessiond = start("serve", env)
    with server.client() as client:
        sessions = {name: create_session(client, name) for name in ("Quiet", "Keepalive")}
        sessions |= {name: create_session(client, name) for name in ("Banned", "Failing")}
        for created in sessions.values():
            scan(client, created)
        before = scrape(client)

        # Check: each state made as the simulator's phone or a client makes it.
        quiet = sessions["Quiet"]
        simulate(client, quiet, "inbound", sender=FRIEND, text="watched from now on")
        simulate(client, quiet, "silent", answersChecks=False)
        simulate(client, sessions["Keepalive"], "keepalive", healthy=False)
        simulate(client, sessions["Banned"], "ban", seconds=3600)
        queue(client, sessions["Banned"], FRIEND, 101)
        queue(client, sessions["Failing"], NOBODY, 5)

        def settled() -> list[Sample] | None:
            samples = scrape(client)
            states = [
                value(samples, "sessiond_sessions_degraded", reason="silent"),
                value(samples, "sessiond_sessions_degraded", reason="keepalive_failing"),
                value(samples, "sessiond_sessions_restricted", kind="temporarily_banned"),
                value(samples, "sessiond_message_queue_depth_max"),
                value(samples, "sessiond_messages_total", direction="outbound", status="failed"),
            ]
            return samples if states == [1, 1, 1, 101, 5] else None

        after = eventually(settled, what="every state in /metrics", timeout=60)

    assert after is not None
    firing = {
        "SessiondSessionSilent": [expected("SessiondSessionSilent", 1)],
        "SessiondSessionKeepalivesFailing": [expected("SessiondSessionKeepalivesFailing", 1)],
        "SessiondSessionTemporarilyBanned": [
            expected("SessiondSessionTemporarilyBanned", 1, kind="temporarily_banned")
        ],
        "SessiondQueueDepthHigh": [expected("SessiondQueueDepthHigh", 101)],
        "SessiondMessagesFailing": [expected("SessiondMessagesFailing", 1)],
    }
    quiet_alerts = [
        "SessiondSessionDisconnected",
        "SessiondSessionDisconnectedLong",
        "SessiondQRCodesExpired",
        "SessiondSessionRestricted",
        "SessiondWebhookEndpointFailing",
        "SessiondWebhookEndpointDisabled",
        "SessiondSessionRequestsRateLimited",
        "SessiondSessionRequestsNearLimit",
        "SessiondDown",
        "SessiondProjectionLagHigh",
    ]
    check_alerts(tmp_path, before, after, firing, quiet_alerts)
