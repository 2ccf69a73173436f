"""Webhooks end to end in one process, to a real receiver on 127.0.0.1 that checks every
signature with the official Standard Webhooks verifier: a drop arrives signed within a
second; a receiver that is down gets every event once it recovers, each with the same id on
every try; 410 disables, 3xx fails, Retry-After is honoured, dead letters, rotation, replay,
and who may manage which endpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import connected_session, disabled_webhook, eventually, simulate
from tests.receiver import Answer, Received, Receiver, receiver


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "only",
        "SESSIOND_WEBHOOK_RETRY_SCALE": "0.0001",  # a day of retries in about 9 s
        "SESSIOND_RETRY_BASE": "5",
        "SESSIOND_WEBHOOK_TIMEOUT": "0.5",
    }


async def register(
    api: Api, url: str, events: list[str], headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = await api.client.post(
        "/webhooks", json={"url": url, "events": events, **body}, headers=headers or ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def of_type(kind: str) -> Any:
    def check(received: list[Received]) -> list[Received]:
        return [r for r in received if r.json["type"] == kind]

    return check


async def wait_received(hook: Receiver, check: Any, timeout: float = 30.0) -> Any:
    return await asyncio.to_thread(hook.wait_for, check, timeout)


async def test_a_drop_arrives_signed(api: Api, hook: Receiver) -> None:
    # How soon it arrives is measured by bench/webhook_delivery.py, not timed here.
    webhook = await register(api, hook.url, ["session.socket-disconnected"])
    assert webhook["secret"].startswith("whsec_") and webhook["enabled"]
    created = await connected_session(api, "Watched")
    await simulate(api, created, "drop")
    (arrived,) = await wait_received(hook, of_type("session.socket-disconnected"))
    body = arrived.verify(webhook["secret"])
    assert body["data"]["sessionId"] == created["sessionId"]
    assert body["data"]["reason"] == "connection_lost"
    assert body["timestamp"].endswith("Z") and arrived.headers["webhook-id"].startswith("evt_")
    assert arrived.path == "/hook"
    for secret in (webhook["secret"], created["apiKey"]["key"], "key_hash"):
        assert secret.encode() not in arrived.body


async def test_every_event_type_is_delivered_with_no_secret_in_it(api: Api, hook: Receiver) -> None:
    webhook = await register(
        api,
        hook.url,
        [
            "session.created",
            "session.qr",
            "session.socket-connected",
            "message.sent",
            "message.received",
            "message.delivered",
            "session.stopped",
            "session.deleted",
        ],
    )
    created = await api.create_session("Everything")
    await eventually(lambda: _qr_shown(api, created))
    await simulate(api, created, "scan")
    sent = await api.client.post(
        f"/sessions/{created['sessionId']}/messages",
        json={"to": "+14155550123", "text": "hello"},
        headers=api.key(created),
    )
    message_id = sent.json()["messageId"]
    await wait_received(hook, of_type("message.sent"))
    await simulate(api, created, "ack", messageId=message_id, status="delivered")
    await simulate(api, created, "inbound", sender="+4915112345678", text="hi back")
    await api.client.post(f"/sessions/{created['sessionId']}/stop", headers=ADMIN)
    await api.client.delete(f"/sessions/{created['sessionId']}", headers=ADMIN)

    # Deliveries go out concurrently (and the receiver is threaded): session.deleted can
    # arrive before the others, so wait until every subscribed type has come.
    def every_type(received: list[Received]) -> bool:
        return set(webhook["events"]) <= {r.json["type"] for r in received}

    await wait_received(hook, every_type)
    for request in hook.received:
        request.verify(webhook["secret"])
        assert b"whsec_" not in request.body and b"sdk_" not in request.body
        assert b'"code"' not in request.body  # never the QR code itself
    inbound = of_type("message.received")(hook.received)[0].json["data"]
    assert (inbound["text"], inbound["from"]) == ("hi back", "4915112345678@s.whatsapp.net")


async def _qr_shown(api: Api, created: dict[str, Any]) -> bool:
    response = await api.client.get(
        f"/sessions/{created['sessionId']}/qr", headers=api.key(created)
    )
    return response.status_code == 200


async def test_a_receiver_that_is_down_gets_every_event_once_it_recovers(
    api: Api, hook: Receiver
) -> None:
    hook.script = [Answer(503)] * 3
    webhook = await register(api, hook.url, ["session.created", "session.stopped"])
    sessions = [await api.create_session(f"Outage {n}") for n in range(3)]
    for created in sessions:
        await api.client.post(f"/sessions/{created['sessionId']}/stop", headers=ADMIN)

    def all_delivered(received: list[Received]) -> bool:
        ok = {r.headers["webhook-id"] for r in received}
        return len(ok) == 6 and len(received) >= 9  # 3 refused, then every event

    await wait_received(hook, all_delivered)
    by_id: dict[str, list[Received]] = {}
    for request in hook.received:
        request.verify(webhook["secret"])
        by_id.setdefault(request.headers["webhook-id"], []).append(request)
    assert len(by_id) == 6
    retried = [copies for copies in by_id.values() if len(copies) > 1]
    assert retried, "the refused ones were sent again"
    for copies in retried:  # the same event: same id and same body on every try
        assert len({c.body for c in copies}) == 1

    async def all_marked() -> Any:
        page = (
            await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
        ).json()
        return page if all(d["status"] == "delivered" for d in page["items"]) else None

    page = await eventually(all_marked)
    assert len(page["items"]) == 6
    failed_first = [d for d in page["items"] if d["attempts"] > 1]
    assert failed_first and failed_first[0]["attemptLog"][0]["statusCode"] == 503
    assert failed_first[0]["attemptLog"][-1]["statusCode"] == 200
    assert failed_first[0]["attemptLog"][0]["durationMs"] >= 0


async def test_a_receiver_that_times_out_gets_the_event_again_with_the_same_id(
    api: Api, hook: Receiver
) -> None:
    # Far longer than the 0.5 s the receiver is given, so the bound on the attempt's duration
    # below can leave room for a loaded machine and still tell the time-out from the answer.
    hook.script = [Answer(200, delay=5.0)]
    webhook = await register(api, hook.url, ["session.created"])
    await api.create_session("Slow")
    first, second = await wait_received(hook, lambda r: r[:2] if len(r) >= 2 else None)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    page = (
        await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
    ).json()
    log = page["items"][0]["attemptLog"]
    assert "Timeout" in log[0]["error"] and log[0]["statusCode"] is None
    assert 500 <= log[0]["durationMs"] < 4500  # cut by the time-out, not ended by the answer


async def test_a_receiver_that_refuses_connections_gets_the_events_later(api: Api) -> None:
    with receiver() as hook:
        url = hook.url
    # The port is closed now: connections are refused.
    webhook = await register(api, url, ["session.created"])
    created = await api.create_session("Refused")

    async def tried() -> Any:
        page = (
            await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
        ).json()
        items = page["items"]
        return items if items and items[0]["attempts"] >= 2 else None

    items = await eventually(tried)
    assert "ConnectError" in items[0]["attemptLog"][0]["error"]
    assert items[0]["status"] == "pending"
    assert items[0]["eventType"] == "session.created"
    assert created["sessionId"] == items[0]["sessionId"]


async def test_a_malformed_answer_is_a_failed_attempt_and_the_event_comes_again(
    api: Api, hook: Receiver
) -> None:
    hook.script = [Answer(raw=b"HELLO\r\n\r\n")]
    webhook = await register(api, hook.url, ["session.created"])
    await api.create_session("Garbled")
    first, second = await wait_received(hook, lambda r: r[:2] if len(r) >= 2 else None)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]

    async def delivered() -> Any:
        page = (
            await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
        ).json()
        items = page["items"]
        return items if items and items[0]["status"] == "delivered" else None

    items = await eventually(delivered)
    log = items[0]["attemptLog"]
    assert log[0]["statusCode"] is None
    assert log[0]["error"].startswith("RemoteProtocolError"), log[0]["error"]
    assert log[-1]["statusCode"] == 200


async def test_410_disables_the_endpoint_and_3xx_is_a_failure(api: Api, hook: Receiver) -> None:
    hook.script = [Answer(302, {"location": hook.url + "/elsewhere"})]
    webhook = await register(api, hook.url, ["session.created"])
    await api.create_session("Redirected")
    await wait_received(hook, lambda r: len(r) >= 2)  # redirected (failed), then sent again
    assert all(r.path == "/hook" for r in hook.received), "the redirect was not followed"
    page = (
        await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
    ).json()
    log = page["items"][0]["attemptLog"]
    assert log[0]["statusCode"] == 302 and "not followed" in log[0]["error"]

    hook.default = Answer(410)
    await api.create_session("Gone")

    body = await disabled_webhook(api, webhook["webhookId"])
    assert "410" in body["disabledReason"]
    count = len(hook.received)
    with receiver() as witness:
        await register(api, witness.url, ["session.created"])
        after = await api.create_session("After gone")
        # Check: once the event has reached another endpoint (an event's deliveries are
        # enqueued together, for every endpoint), the disabled one has none of it.
        await wait_received(
            witness, lambda r: [x for x in r if x.json["data"]["sessionId"] == after["sessionId"]]
        )
    page = (
        await api.client.get(f"/webhooks/{webhook['webhookId']}/deliveries", headers=ADMIN)
    ).json()
    assert after["sessionId"] not in [item["sessionId"] for item in page["items"]]
    assert len(hook.received) == count, "a disabled endpoint gets nothing"
    enabled = await api.client.patch(
        f"/webhooks/{webhook['webhookId']}", json={"enabled": True}, headers=ADMIN
    )
    assert enabled.status_code == 200 and enabled.json()["enabled"]


async def test_retry_after_is_honoured(api: Api, hook: Receiver) -> None:
    hook.script = [Answer(429, {"retry-after": "1"})]
    await register(api, hook.url, ["session.created"])
    await api.create_session("Patience")
    first, second = await wait_received(hook, lambda r: r[:2] if len(r) >= 2 else None)
    assert second.at - first.at >= 0.9, second.at - first.at


async def test_a_delivery_that_always_fails_is_dead_lettered_then_can_be_retried(
    api: Api, hook: Receiver
) -> None:
    hook.default = Answer(500)
    webhook = await register(api, hook.url, ["session.created"])
    await api.create_session("Doomed")
    url = f"/webhooks/{webhook['webhookId']}/deliveries"

    async def dead() -> Any:
        page = (await api.client.get(url, headers=ADMIN)).json()
        return page["items"] if page["items"] and page["items"][0]["status"] == "dead" else None

    items = await eventually(dead, timeout=60)
    assert items[0]["attempts"] == 11 and len(items[0]["attemptLog"]) == 11
    hook.default = Answer(200)
    retried = await api.client.post(f"{url}/{items[0]['deliveryId']}/retry", headers=ADMIN)
    assert retried.status_code == 202

    async def delivered() -> Any:
        page = (await api.client.get(url + "?status=delivered", headers=ADMIN)).json()
        return page["items"] or None

    (done,) = await eventually(delivered)
    assert done["eventId"] == items[0]["eventId"]
    ids = {r.headers["webhook-id"] for r in hook.received}
    assert ids == {done["eventId"]}, "every try carried the same webhook-id"


async def test_after_a_rotation_both_secrets_verify_until_the_grace_ends(
    api: Api, hook: Receiver
) -> None:
    webhook = await register(api, hook.url, ["session.created"])
    rotated = await api.client.post(
        f"/webhooks/{webhook['webhookId']}/rotate-secret",
        json={"graceSeconds": 3600},
        headers=ADMIN,
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != webhook["secret"]
    await api.create_session("Rotated")
    (arrived,) = await wait_received(hook, of_type("session.created"))
    assert len(arrived.headers["webhook-signature"].split(" ")) == 2
    arrived.verify(new_secret)
    arrived.verify(webhook["secret"])


async def test_a_replay_sends_a_time_range_again_with_the_same_ids(
    api: Api, hook: Receiver
) -> None:
    webhook = await register(api, hook.url, ["session.created", "session.stopped"])
    start = datetime.now(UTC)
    first = await api.create_session("Replayed")
    await api.client.post(f"/sessions/{first['sessionId']}/stop", headers=ADMIN)
    await wait_received(hook, lambda r: len(r) >= 2)
    end = datetime.now(UTC) + timedelta(seconds=1)
    ids = sorted(r.headers["webhook-id"] for r in hook.received)
    replay = await api.client.post(
        f"/webhooks/{webhook['webhookId']}/replay",
        json={"from": start.isoformat(), "to": end.isoformat()},
        headers=ADMIN,
    )
    assert replay.status_code == 202, replay.text
    assert replay.json()["enqueued"] == 2
    await wait_received(hook, lambda r: len(r) >= 4)
    assert sorted(r.headers["webhook-id"] for r in hook.received[2:]) == ids
    bad = await api.client.post(
        f"/webhooks/{webhook['webhookId']}/replay",
        json={"from": end.isoformat(), "to": start.isoformat()},
        headers=ADMIN,
    )
    assert bad.status_code == 422


async def test_a_session_key_manages_only_its_own_sessions_endpoints(
    api: Api, hook: Receiver
) -> None:
    mine = await api.create_session("Mine")
    theirs = await api.create_session("Theirs")
    own = await register(api, hook.url, ["session.stopped"], headers=api.key(mine))
    assert own["sessionId"] == mine["sessionId"]
    foreign = await api.client.post(
        "/webhooks",
        json={"url": hook.url, "events": ["session.stopped"], "sessionId": theirs["sessionId"]},
        headers=api.key(mine),
    )
    assert foreign.status_code == 404
    listed = (await api.client.get("/webhooks", headers=api.key(theirs))).json()
    assert listed["items"] == []
    hidden = await api.client.get(f"/webhooks/{own['webhookId']}", headers=api.key(theirs))
    assert hidden.status_code == 404
    gone = await api.client.delete(f"/webhooks/{own['webhookId']}", headers=api.key(theirs))
    assert gone.status_code == 404
    # Only the session's own events reach a session's endpoint.
    await api.client.post(f"/sessions/{theirs['sessionId']}/stop", headers=ADMIN)
    await api.client.post(f"/sessions/{mine['sessionId']}/stop", headers=ADMIN)
    (arrived,) = await wait_received(hook, of_type("session.stopped"))
    # Their stop, recorded first, was taken in before: the endpoint has nothing of it.
    page = (await api.client.get(f"/webhooks/{own['webhookId']}/deliveries", headers=ADMIN)).json()
    assert [item["sessionId"] for item in page["items"]] == [mine["sessionId"]]
    assert [r.json["data"]["sessionId"] for r in hook.received] == [mine["sessionId"]]
    arrived.verify(own["secret"])
    deleted = await api.client.delete(f"/webhooks/{own['webhookId']}", headers=api.key(mine))
    assert deleted.status_code == 204
    assert (await api.client.get("/webhooks", headers=api.key(mine))).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "ftp://example.com/x", "events": ["session.created"]}, 422),
        ({"url": "https://user:pw@example.com/x", "events": ["session.created"]}, 422),
        ({"url": "https://example.com/x", "events": []}, 422),
        ({"url": "https://example.com/x", "events": ["session.exploded"]}, 422),
        ({"url": "https://example.com/x"}, 422),
    ],
)
async def test_bad_webhooks_are_refused(api: Api, body: dict[str, Any], status: int) -> None:
    response = await api.client.post("/webhooks", json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
