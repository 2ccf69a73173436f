"""A session's sending pace and quotas over HTTP (simulator gateway, one process): set at
creation or with PUT (admin), read back with the quota state, recorded as `SendingSet`, bad
input refused with a problem; a message over the hour quota answers 202 with the quota in
`X-Messages-*` headers, stays queued with `nextAttemptAt` and the reason `quota`; "typing…"
reaches the simulator before each text when it is on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import Dashboard
from tests.integration.steps import (
    connected_session,
    event_types,
    message,
    send,
    simulate,
    simulator,
    until_status,
    uuid_of,
)


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_SEND_INTERVAL": "0.05", "SESSIOND_MESSAGES_PER_DAY": "500"}


def sending_url(created: dict[str, Any]) -> str:
    return f"/sessions/{created['sessionId']}/sending"


async def test_settings_set_at_creation_and_with_put_are_recorded_and_read_back(api: Api) -> None:
    created = await api.create_session(
        "Paced", sending={"intervalSeconds": 2, "jitterSeconds": 1.5, "messagesPerHour": 100}
    )
    got = await api.client.get(sending_url(created), headers=api.key(created))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["intervalSeconds"] == 2 and body["jitterSeconds"] == 1.5
    assert body["messagesPerHour"] == 100 and body["messagesPerDay"] == 500  # the default
    assert body["typing"] is False
    assert body["own"] == ["intervalSeconds", "jitterSeconds", "messagesPerHour"]
    assert body["remainingHour"] == 100 and body["remainingDay"] == 500
    assert body["nextSendAt"] is None and body["queued"] == 0

    # Check PUT replaces the session's own settings; a quota of null is no quota.
    put = await api.client.put(
        sending_url(created), headers=ADMIN, json={"messagesPerDay": None, "typing": True}
    )
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["intervalSeconds"] == 0.05 and body["jitterSeconds"] == 0  # defaults again
    assert body["messagesPerHour"] is None and body["messagesPerDay"] is None
    assert body["typing"] is True and body["own"] == ["messagesPerDay", "typing"]
    assert event_types(api, created["sessionId"]).count("SendingSet") == 2
    # The same settings again record nothing.
    await api.client.put(
        sending_url(created), headers=ADMIN, json={"messagesPerDay": None, "typing": True}
    )
    assert event_types(api, created["sessionId"]).count("SendingSet") == 2

    # Check the history shows the change.
    history = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    [*_, last] = [e for e in history.json()["items"] if e["type"] == "SendingSet"]
    assert last["data"]["settings"] == {"per_day": None, "typing": True}


@pytest.mark.parametrize(
    "body",
    [
        {"intervalSeconds": -1},
        {"intervalSeconds": 3601},
        {"jitterSeconds": "2"},
        {"messagesPerHour": 0},
        {"messagesPerDay": 1.5},
        {"typing": "yes"},
        {"speed": 3},
        [],
    ],
)
async def test_bad_settings_are_a_422_problem_and_record_nothing(api: Api, body: Any) -> None:
    created = await api.create_session("Bad")
    response = await api.client.put(sending_url(created), headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "SendingSet" not in event_types(api, created["sessionId"])
    refused = await api.client.post(
        "/sessions", headers=ADMIN, json={"name": "Bad", "sending": body}
    )
    assert refused.status_code == 422, refused.text


async def test_only_the_admin_sets_them_and_the_key_comes_first(api: Api) -> None:
    created = await api.create_session("Mine")
    response = await api.client.put(
        sending_url(created), headers=api.key(created), json={"messagesPerHour": 1000}
    )
    assert response.status_code == 403, response.text
    garbage = await api.client.put(sending_url(created), content=b"{not json")
    assert garbage.status_code == 401


async def test_a_message_over_the_hour_quota_is_held_with_its_next_attempt(api: Api) -> None:
    created = await connected_session(api, "Quota")
    await api.client.put(sending_url(created), headers=ADMIN, json={"messagesPerHour": 2})
    answers = [await send(api, created, f"m{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    # Check the headers count what is sent and what waits: 2 - 0 - 1, then 0 left.
    assert answers[0].headers["x-messages-limit-hour"] == "2"
    assert answers[0].headers["x-messages-remaining-hour"] == "1"
    assert answers[2].headers["x-messages-remaining-hour"] == "0"
    assert answers[2].headers["x-messages-limit-day"] == "500"
    ids = [a.json()["messageId"] for a in answers]
    for sent in ids[:2]:
        await until_status(api, created, sent, "sent")

    held = await message(api, created, ids[2])
    assert held["status"] == "queued" and held["reason"] == "quota"
    opens = datetime.fromisoformat(held["nextAttemptAt"])
    now = datetime.now(UTC)
    assert now + timedelta(minutes=58) < opens <= now + timedelta(minutes=61)
    listed = await api.client.get(
        f"/sessions/{created['sessionId']}/messages?status=queued", headers=api.key(created)
    )
    [item] = listed.json()["items"]
    assert item["nextAttemptAt"] == held["nextAttemptAt"]
    state = (await api.client.get(sending_url(created), headers=ADMIN)).json()
    assert state["sentLastHour"] == 2 and state["remainingHour"] == 0 and state["queued"] == 1
    assert state["nextSendAt"] == held["nextAttemptAt"]

    # Check the dashboard's session page shows the pace, the quotas and the held message.
    dash = Dashboard(api.client)
    await dash.sign_in()
    page = (await dash.get(f"/dashboard/sessions/{created['sessionId']}")).text
    assert "at least 0.05 s between messages" in page
    assert "2 sent of 2" in page and "2 sent of 500" in page
    assert "1 message waiting" in page
    assert f'datetime="{opens.isoformat()}"' in page

    # Check a higher quota lets it go at once.
    await api.client.put(sending_url(created), headers=ADMIN, json={"messagesPerHour": 3})
    sent = await until_status(api, created, ids[2], "sent")
    assert sent["nextAttemptAt"] is None and sent["reason"] is None


async def test_typing_reaches_the_simulator_before_each_text(api: Api) -> None:
    created = await api.create_session("Typist", sending={"typing": True})
    await simulate(api, created, "scan")
    answer = await send(api, created, "hello there")
    await until_status(api, created, answer.json()["messageId"], "sent")
    presences = simulator(api).presences(uuid_of(created))
    assert [state for _, _, state in presences] == ["composing", "paused"]
    (composing, to, _), (paused, _, _) = presences
    assert to == "14155550123@s.whatsapp.net"
    assert (paused - composing).total_seconds() >= 1.0
    sent = await message(api, created, answer.json()["messageId"])
    assert datetime.fromisoformat(sent["sentAt"]) >= paused - timedelta(milliseconds=5)
