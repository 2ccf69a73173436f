"""Messages end to end in one process (simulator gateway): a text sent while the session is
not connected waits in its queue and drains in order, paced, when it connects; acks move it
to delivered and read; inbound texts are recorded and counted; the status's counters, last
activity and queue depth follow; idempotency keys, bad input and deleted sessions."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import pytest

from application.ports import InboundMessage
from infra.postgres.messages import PostgresMessagesView
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import (
    connected_session,
    event_types,
    eventually,
    message,
    send,
    simulate,
    status,
    until_status,
)

PHONE = "+14155550123"
JID = "14155550123@s.whatsapp.net"
SEND_INTERVAL = 0.2


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_SEND_INTERVAL": str(SEND_INTERVAL)}


async def test_texts_queued_while_disconnected_drain_in_order_on_connect(api: Api) -> None:
    created = await api.create_session("Queue")
    ids = []
    for n in range(3):
        response = await send(api, created, f"hello {n}")
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "queued" and body["to"] == JID and body["text"] == f"hello {n}"
        assert response.headers["location"].endswith(body["messageId"])
        ids.append(body["messageId"])
    before = await status(api, created)
    assert before["metrics"]["queueDepth"] == 3
    assert before["metrics"]["messagesSent"] == 0 and before["lastActivityAt"] is None

    await simulate(api, created, "scan")
    last = await until_status(api, created, ids[-1], "sent")
    sent = [await message(api, created, i) for i in ids]
    times = [datetime.fromisoformat(m["sentAt"]) for m in sent]
    assert times == sorted(times), "sent in the order queued"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= SEND_INTERVAL * 0.9, f"paced per session: {gaps}"
    assert all(m["whatsappId"] for m in sent)

    after = await eventually(
        lambda: _status_when(api, created, lambda s: s["metrics"]["messagesSent"] == 3)
    )
    assert after["metrics"]["queueDepth"] == 0
    assert after["lastActivityAt"] == last["sentAt"]
    types = event_types(api, created["sessionId"])
    assert types.count("MessageQueued") == 3 and types.count("MessageSent") == 3


async def _status_when(api: Api, created: dict[str, Any], ok: Any) -> dict[str, Any] | None:
    body = await status(api, created)
    return body if ok(body) else None


async def test_acks_move_a_sent_text_to_delivered_then_read(api: Api) -> None:
    created = await connected_session(api, "Acks")
    queued = (await send(api, created, "did you get it?")).json()
    await until_status(api, created, queued["messageId"], "sent")
    await simulate(api, created, "ack", messageId=queued["messageId"], status="delivered")
    # The messages view follows the log (under load, a moment after the ack is recorded).
    delivered = await until_status(api, created, queued["messageId"], "delivered")
    assert delivered["status"] == "delivered" and delivered["deliveredAt"]
    await simulate(api, created, "ack", messageId=queued["messageId"], status="read")
    read = await until_status(api, created, queued["messageId"], "read")
    assert read["status"] == "read" and read["readAt"] and read["deliveredAt"]
    # A repeated or late ack changes nothing and records nothing.
    await simulate(api, created, "ack", messageId=queued["messageId"], status="delivered")
    assert (await message(api, created, queued["messageId"]))["status"] == "read"
    types = event_types(api, created["sessionId"])
    assert types.count("MessageDelivered") == 1 and types.count("MessageRead") == 1
    metrics = (await status(api, created))["metrics"]
    assert (metrics["messagesDelivered"], metrics["messagesRead"]) == (1, 1)


async def test_an_ack_for_a_text_not_sent_yet_is_refused(api: Api) -> None:
    created = await api.create_session("Early ack")
    queued = (await send(api, created, "waiting")).json()
    await simulate(api, created, "scan")
    await until_status(api, created, queued["messageId"], "sent")
    other = await api.create_session("Other")
    response = await api.client.post(
        f"/simulator/sessions/{other['sessionId']}/ack",
        json={"messageId": queued["messageId"], "status": "read"},
        headers=ADMIN,
    )
    assert response.status_code == 404  # another session's message


async def test_inbound_texts_are_recorded_counted_and_listed(api: Api) -> None:
    created = await connected_session(api, "Inbound")
    await simulate(api, created, "inbound", sender="+4915112345678", text="hi there")
    await simulate(api, created, "inbound", sender="4915112345678@s.whatsapp.net", text="again")
    body = await status(api, created)
    assert body["metrics"]["messagesReceived"] == 2
    assert body["lastActivityAt"] is not None

    # The list is the messages view, another projection than the status read above: it
    # shows both once it has caught up.
    async def listed() -> list[dict[str, Any]] | None:
        page = await api.client.get(
            f"/sessions/{created['sessionId']}/messages?direction=inbound",
            headers=api.key(created),
        )
        found: list[dict[str, Any]] = page.json()["items"]
        return found if len(found) == 2 else None

    items = await eventually(listed)
    assert [m["text"] for m in items] == ["again", "hi there"]  # newest first
    assert {m["sender"] for m in items} == {"4915112345678@s.whatsapp.net"}
    assert all(m["status"] == "received" and m["direction"] == "inbound" for m in items)


async def test_the_same_whatsapp_message_reported_twice_is_recorded_once(api: Api) -> None:
    created = await connected_session(api, "Twice")
    worker = api.container.worker
    assert worker is not None
    uuid = api.container.app.load(created["sessionId"]).id
    message = InboundMessage("3EB0AAAA", JID, JID, "once", datetime.now().astimezone())
    first = await asyncio.to_thread(api.container.app.record_received, uuid, message)
    second = await asyncio.to_thread(api.container.app.record_received, uuid, message)
    assert first is not None and second is None
    assert event_types(api, created["sessionId"]).count("MessageReceived") == 1


async def test_the_list_is_paged_newest_first_and_filtered(api: Api) -> None:
    created = await api.create_session("Pages")
    ids = [(await send(api, created, f"m{n}")).json()["messageId"] for n in range(5)]
    url = f"/sessions/{created['sessionId']}/messages"
    key = api.key(created)
    first = (await api.client.get(url + "?limit=2", headers=key)).json()
    assert [m["messageId"] for m in first["items"]] == ids[::-1][:2]
    second = (await api.client.get(url + f"?limit=2&before={first['next']}", headers=key)).json()
    assert [m["messageId"] for m in second["items"]] == ids[::-1][2:4]
    third = (await api.client.get(url + f"?limit=2&before={second['next']}", headers=key)).json()
    assert [m["messageId"] for m in third["items"]] == ids[:1] and third["next"] is None
    queued = (await api.client.get(url + "?status=queued", headers=key)).json()
    assert len(queued["items"]) == 5
    assert (await api.client.get(url + "?status=sent", headers=key)).json()["items"] == []
    bad = await api.client.get(url + "?status=lost", headers=key)
    assert bad.status_code == 400


async def test_an_idempotency_key_makes_a_retry_return_the_same_message(api: Api) -> None:
    created = await api.create_session("Retries")
    first = await send(api, created, "pay me", **{"Idempotency-Key": "order-42"})
    again = await send(api, created, "pay me", **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert again.json()["messageId"] == first.json()["messageId"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    other = await send(api, created, "pay me more", **{"Idempotency-Key": "order-42"})
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-key-reused")
    fresh = await send(api, created, "pay me", **{"Idempotency-Key": "order-43"})
    assert fresh.json()["messageId"] != first.json()["messageId"]
    assert event_types(api, created["sessionId"]).count("MessageQueued") == 2
    assert (await status(api, created))["metrics"]["queueDepth"] == 2


async def test_concurrent_retries_with_one_key_queue_one_message(api: Api) -> None:
    created = await api.create_session("Race")
    answers = await asyncio.gather(
        *(send(api, created, "once", **{"Idempotency-Key": "k-1"}) for _ in range(6))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["messageId"] for a in answers}) == 1
    assert event_types(api, created["sessionId"]).count("MessageQueued") == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"to": "not a phone", "text": "x"}, "invalid-recipient"),
        ({"to": "+999123", "text": "x"}, "invalid-recipient"),
        ({"to": "12@g.us.evil", "text": "x"}, "invalid-recipient"),
        ({"to": PHONE, "text": ""}, "invalid-request"),
        ({"to": PHONE, "text": "   \n"}, "invalid-value"),
        ({"to": PHONE, "text": "x" * 4097}, "invalid-request"),
        ({"to": PHONE}, "invalid-request"),
        ({"to": PHONE, "text": "x", "extra": 1}, "invalid-request"),
    ],
)
async def test_bad_messages_are_refused_and_nothing_is_recorded(
    api: Api, body: dict[str, Any], code: str
) -> None:
    created = await api.create_session("Bad input")
    response = await api.client.post(
        f"/sessions/{created['sessionId']}/messages", json=body, headers=api.key(created)
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith(code), response.json()
    types = event_types(api, created["sessionId"])
    assert not [t for t in types if t.startswith("Message")]


async def test_a_bad_idempotency_key_is_a_400(api: Api) -> None:
    created = await api.create_session("Bad key")
    response = await send(api, created, "x", **{"Idempotency-Key": "k" * 256})
    assert response.status_code == 400


async def test_a_deleted_session_takes_no_messages_and_fails_its_queue(api: Api) -> None:
    created = await api.create_session("Deleted")
    queued = (await send(api, created, "never sent")).json()
    deleted = await api.client.delete(f"/sessions/{created['sessionId']}", headers=ADMIN)
    assert deleted.status_code == 204
    refused = await api.client.post(
        f"/sessions/{created['sessionId']}/messages",
        json={"to": PHONE, "text": "late"},
        headers=ADMIN,
    )
    assert refused.status_code == 404
    # The delete's 204 waits for the views its next reads use (status, keys), not for the
    # messages view, which is another projection: it shows the failure once it has caught up.
    view = api.container.views.of(PostgresMessagesView)

    async def failed() -> bool:
        row = view.get_message(queued["messageId"])
        return row is not None and (row.status, row.reason) == ("failed", "session_deleted")

    assert await eventually(failed)
    types = event_types(api, created["sessionId"])
    assert types[-3:] == ["Deleted", "KeysRevoked", "MessageFailed"]


async def test_a_refused_recipient_fails_and_the_queue_goes_on(api: Api) -> None:
    created = await api.create_session("Rejected")
    bad = (await send(api, created, "to nobody", to="0123456@s.whatsapp.net")).json()
    good = (await send(api, created, "to someone")).json()
    await simulate(api, created, "scan")
    failed = await until_status(api, created, bad["messageId"], "failed")
    assert failed["reason"] == "rejected" and "not on WhatsApp" in failed["detail"]
    await until_status(api, created, good["messageId"], "sent")

    # The worker recorded the send: the status view counts it when it has caught up on its own
    # (the messages view read above is another projection).
    async def counted() -> bool:
        metrics = (await status(api, created))["metrics"]
        wanted = (metrics["messagesFailed"], metrics["messagesSent"], metrics["queueDepth"])
        return wanted == (1, 1, 0)

    assert await eventually(counted)


async def test_a_key_of_another_session_cannot_read_or_send(api: Api) -> None:
    mine = await api.create_session("Mine")
    theirs = await api.create_session("Theirs")
    queued = (await send(api, mine, "private")).json()
    url = f"/sessions/{mine['sessionId']}/messages"
    assert (await api.client.get(url, headers=api.key(theirs))).status_code in (401, 404)
    wrong = await api.client.get(
        f"/sessions/{theirs['sessionId']}/messages/{queued['messageId']}", headers=api.key(theirs)
    )
    assert wrong.status_code == 404


async def test_a_message_waits_while_the_link_is_down_and_goes_after_the_retry(api: Api) -> None:
    created = await connected_session(api, "Flaky")
    await simulate(api, created, "drop")
    queued = (await send(api, created, "after the drop")).json()
    assert (await message(api, created, queued["messageId"]))["status"] in ("queued", "sent")
    sent = await until_status(api, created, queued["messageId"], "sent")
    assert sent["sentAt"] > sent["createdAt"]


async def test_a_message_recorded_while_the_views_lag_is_still_answered_202(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.problems import ProblemError
    from api.writes import Writes

    async def lagging(writes: Writes, position: int | None, *, revocation: bool = False) -> None:
        raise ProblemError(503, "views-lagging", "the views lag")

    created = await api.create_session("Lagging views")
    monkeypatch.setattr(Writes, "settle", lagging)
    response = await send(api, created, "do not send me twice")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["text"] == "do not send me twice"
    assert body["messageId"].startswith("msg_") and body["createdAt"]
    assert response.headers["location"].endswith(body["messageId"])
    shown = await eventually(lambda: _found(api, created, body["messageId"]))
    assert shown["messageId"] == body["messageId"]


async def _found(api: Api, created: dict[str, Any], message_id: str) -> dict[str, Any] | None:
    response = await api.client.get(
        f"/sessions/{created['sessionId']}/messages/{message_id}", headers=api.key(created)
    )
    return response.json() if response.status_code == 200 else None
