"""The session supervisor end to end in one process: QR images and pairing codes, the
reconnect policy per reason, degraded health, an unreachable WhatsApp, and a worker that
loses its database connection."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from domain.session import Session
from domain.values import DeadlineKind, session_uuid
from infra.postgres.gateway import PostgresGatewayView
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import (
    connected_session,
    event_types,
    eventually,
    simulate,
    simulator,
    status,
    uuid_of,
)


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_RETRY_BASE": "0.3", "SESSIOND_RETRY_CAP": "1"}


async def test_the_qr_code_is_served_as_json_png_or_svg(api: Api) -> None:
    created = await api.create_session("Images")
    url, key = f"/sessions/{created['sessionId']}/qr", api.key(created)

    async def qr_json() -> Any:
        response = await api.client.get(url, headers=key)
        return response.json() if response.status_code == 200 else None

    qr = await eventually(qr_json)
    assert (qr["attempt"], qr["maxAttempts"]) == (1, 6)
    png = await api.client.get(url, headers={**key, "accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = await api.client.get(url, headers={**key, "accept": "image/svg+xml"})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg")
    either = await api.client.get(url, headers={**key, "accept": "text/html, image/*;q=0.9"})
    assert either.headers["content-type"] in ("image/png", "image/svg+xml")
    refused = await api.client.get(url, headers={**key, "accept": "text/csv"})
    assert refused.status_code == 406
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_a_pairing_code_is_given_for_a_valid_phone_while_pairing(api: Api) -> None:
    created = await api.create_session("By phone")
    url, key = f"/sessions/{created['sessionId']}/pair-code", api.key(created)
    # Check a number of the wrong shape fails the schema, one of the right shape that no
    # country has fails phonenumbers' check; both are 422 with a detail naming the phone.
    for bad, problem in (
        ("12", "invalid-request"),
        ("phone", "invalid-request"),
        ("+999 123 4567", "invalid-phone"),
        ("+1 415 555 01234567", "invalid-phone"),
    ):
        response = await api.client.post(url, headers=key, json={"phone": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["type"] == f"urn:sessiond:problem:{problem}", response.text
        assert "phone" in response.json()["detail"]

    async def code() -> Any:
        response = await api.client.post(url, headers=key, json={"phone": "+1 415-555-0123"})
        return response.json() if response.status_code == 200 else None

    answer = await eventually(code)
    assert answer["phone"] == "14155550123"
    assert len(answer["code"]) == 8 and answer["code"].isalnum()

    await simulate(api, created, "scan")
    refused = await api.client.post(url, headers=key, json={"phone": "+14155550123"})
    assert refused.status_code == 409
    assert refused.json()["type"] == "urn:sessiond:problem:not-pairing"


async def test_a_lost_connection_is_retried_with_backoff_and_resumes_the_device(
    api: Api,
) -> None:
    created = await connected_session(api)
    dropped = (await simulate(api, created, "drop")).json()
    # The answer is the status view once it has the drop; the retry comes 0.3 s later, and a
    # view that lagged may have taken it in too: the drop itself is checked on its events.
    assert dropped["status"] in ("disconnected", "connecting", "connected"), dropped
    if dropped["status"] == "disconnected":
        assert (dropped["reason"], dropped["retryAttempt"]) == ("connection_lost", 1), dropped
        assert dropped["nextRetryAt"] is not None and dropped["health"] == "unhealthy"

    async def back() -> Any:
        body = await status(api, created)
        return body if body["status"] == "connected" else None

    body = await eventually(back)
    assert (body["reason"], body["retryAttempt"], body["nextRetryAt"]) == (None, 0, None)
    assert event_types(api, created["sessionId"])[-3:] == [
        "Disconnected",
        "ReconnectAttempted",
        "Connected",
    ]
    *_, lost, attempted, _connected = api.container.app.events.get(uuid_of(created))
    assert isinstance(lost, Session.Disconnected)
    assert isinstance(attempted, Session.ReconnectAttempted)
    assert (lost.reason, lost.attempt, attempted.attempt) == ("connection_lost", 1, 1)
    # Check the retry waited for its backoff: planned after the drop, and made no sooner.
    assert lost.next_retry_at is not None
    assert lost.timestamp < lost.next_retry_at <= attempted.timestamp, (lost, attempted)


async def test_logged_out_and_replaced_sessions_wait_for_the_operator(api: Api) -> None:
    logged_out = await connected_session(api, "Unlinked")
    replaced = await connected_session(api, "Replaced")
    body = (await simulate(api, logged_out, "logout")).json()
    assert (body["reason"], body["nextRetryAt"]) == ("logged_out", None)
    body = (await simulate(api, replaced, "replace")).json()
    assert (body["reason"], body["nextRetryAt"]) == ("stream_replaced", None)
    # Check nothing is retried: once the gateway view has taken the disconnections in, it
    # holds no retry deadline for either session (a retry is nothing but such a deadline).
    recorded = api.container.app.recorder.max_notification_id() or 0
    gateway_view = api.container.views.of(PostgresGatewayView)

    async def taken_in() -> bool:
        return (gateway_view.max_tracking_id(api.container.app.name) or 0) >= recorded

    await eventually(taken_in)
    for created in (logged_out, replaced):
        assert DeadlineKind.RETRY not in [d.kind for d in gateway_view.deadlines(uuid_of(created))]
        assert (await status(api, created))["status"] == "disconnected"

    # Check a reconnect of the unlinked session pairs a new device with a new QR code.
    response = await api.client.post(
        f"/sessions/{logged_out['sessionId']}/reconnect", headers=api.key(logged_out)
    )
    assert response.status_code == 200

    async def qr() -> Any:
        body = await status(api, logged_out)
        return body["qrExpiresAt"]

    await eventually(qr)


async def test_a_banned_session_is_retried_when_the_ban_ends(api: Api) -> None:
    created = await connected_session(api, "Banned")
    body = (await simulate(api, created, "ban", seconds=1)).json()
    assert body["reason"] == "temporarily_banned"
    assert body["nextRetryAt"] is not None

    async def back() -> Any:
        return (await status(api, created))["status"] == "connected"

    await eventually(back)


async def test_failing_keepalives_make_a_connected_session_degraded(api: Api) -> None:
    created = await connected_session(api, "Flaky")
    body = (await simulate(api, created, "keepalive", healthy=False)).json()
    assert (body["status"], body["health"]) == ("connected", "degraded")
    body = (await simulate(api, created, "keepalive", healthy=True)).json()
    assert body["health"] == "healthy"


async def test_when_whatsapp_is_unreachable_the_status_says_so_and_retries(api: Api) -> None:
    simulator(api).set_reachable(False)
    created = await api.create_session("Offline")

    async def failing_again() -> Any:
        body = await status(api, created)
        return body if body["retryAttempt"] >= 2 and body["status"] == "disconnected" else None

    body = await eventually(failing_again)
    assert body["reason"] == "whatsapp_unreachable"
    assert body["detail"] and body["nextRetryAt"] is not None

    simulator(api).set_reachable(True)

    async def pairing() -> Any:
        return (await status(api, created))["qrExpiresAt"]

    await eventually(pairing)


async def test_stop_stops_the_client_and_delete_logs_the_device_out(api: Api) -> None:
    created = await connected_session(api, "Lifecycle")
    uuid = session_uuid(created["sessionId"])
    device = (await api.client.get(f"/sessions/{created['sessionId']}", headers=ADMIN)).json()[
        "phoneJid"
    ]
    assert uuid in simulator(api).running()
    await api.client.post(f"/sessions/{created['sessionId']}/stop", headers=api.key(created))

    async def stopped() -> bool:
        return uuid not in simulator(api).running()

    await eventually(stopped)
    await api.client.post(f"/sessions/{created['sessionId']}/reconnect", headers=api.key(created))

    async def resumed() -> bool:
        return bool((await status(api, created))["status"] == "connected")

    await eventually(resumed)
    assert device in simulator(api)._devices
    deleted = await api.client.delete(f"/sessions/{created['sessionId']}", headers=ADMIN)
    assert deleted.status_code == 204

    async def logged_out() -> bool:
        return device not in simulator(api)._devices and uuid not in simulator(api).running()

    await eventually(logged_out)


async def test_a_worker_that_loses_its_database_connection_gets_its_sessions_back(
    api: Api, database_url: str
) -> None:
    created = await connected_session(api, "Steady")
    worker = api.container.worker
    assert worker is not None
    first_id = worker.worker_id
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            ("sessiond-worker:" + first_id,),
        )

    async def back() -> Any:
        # One read of the events: the takeover's Disconnected, then Connected after it.
        events = list(api.container.app.events.get(uuid_of(created)))
        lost = [
            i
            for i, e in enumerate(events)
            if type(e).__name__ == "Disconnected" and getattr(e, "reason", None) == "gateway_lost"
        ]
        resumed = bool(lost) and type(events[-1]).__name__ == "Connected"
        resumed = resumed and len(events) - 1 > lost[-1]
        return resumed and (await status(api, created))["status"] == "connected"

    try:
        await eventually(back)
    except AssertionError:
        events = list(api.container.app.events.get(uuid_of(created)))
        raise AssertionError(
            [(type(e).__name__, getattr(e, "reason", "")) for e in events]
        ) from None
    assert worker.worker_id != first_id
    assert uuid_of(created) in simulator(api).running()
