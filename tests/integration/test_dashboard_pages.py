"""The dashboard's pages rendered in-process: what an operator without JavaScript sees and
does. Every action goes through the application, recorded with the actor ``admin``."""

from __future__ import annotations

import re
from typing import Any

from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import listed, signed_in, with_session
from tests.integration.steps import eventually, qr_shown

EXTERNAL = re.compile(r'(?:src|href|action)="(?!/|#)([^"]*)"')


async def events_of(api: Api, session_id: str) -> list[dict[str, object]]:
    return await listed(api, f"/sessions/{session_id}/events")


async def test_a_name_that_is_only_spaces_is_refused_with_422_and_nothing_is_recorded(
    api: Api,
) -> None:
    dash = await signed_in(api)
    await dash.get("/dashboard/sessions/new")
    response = await dash.post("/dashboard/sessions", {"name": "   "})
    assert response.status_code == 422
    assert "Name must not be empty." in response.text
    assert 'aria-invalid="true"' in response.text
    long_name = await dash.post("/dashboard/sessions", {"name": "x" * 101})
    assert long_name.status_code == 422
    assert "at most 100 characters" in long_name.text
    assert (await api.client.get("/sessions", headers=ADMIN)).json()["count"] == 0


async def test_creating_a_session_records_it_as_admin_and_shows_its_first_key_once(
    api: Api,
) -> None:
    dash, session_id = await with_session(api)
    link = await dash.get(f"/dashboard/sessions/{session_id}/link")
    key = re.search(r'value="(sdk_[^"]+)"', link.text)
    assert key, "the first key is shown on the page after creating the session"
    await qr_shown(api, session_id)
    link = await dash.get(f"/dashboard/sessions/{session_id}/link")
    assert link.status_code == 200
    # Check the QR code is there, large and labelled, with its attempt and countdown.
    assert '<figure class="qr" data-attempt="1">' in link.text
    assert 'viewBox="0 0 ' in link.text
    assert re.search(r"QR code 1 of \d+", link.text)
    assert "data-expires-at=" in link.text
    # Check the key works on the JSON API, and is not shown again.
    status = await api.client.get(
        f"/sessions/{session_id}/status", headers={"x-api-key": key.group(1)}
    )
    assert status.status_code == 200
    again = await dash.get(f"/dashboard/sessions/{session_id}/link")
    assert key.group(1) not in again.text
    events = await events_of(api, session_id)
    assert events[0]["type"] == "Created"
    assert events[0]["data"]["actor"] == "admin"  # type: ignore[index]


async def test_the_list_shows_each_session_with_its_state_in_words_and_filters_by_it(
    api: Api,
) -> None:
    dash, first = await with_session(api, "Alpha")
    await dash.create_session("Beta")
    await dash.get(f"/dashboard/sessions/{first}")
    await dash.post(f"/dashboard/sessions/{first}/stop")
    page = await dash.get("/dashboard/")
    assert page.status_code == 200
    assert "Alpha" in page.text and "Beta" in page.text
    assert re.search(r'data-state="stopped"[^>]*>.*?Stopped', page.text)
    assert re.search(r'data-state="connecting"[^>]*>.*?Connecting', page.text)
    assert 'data-count="stopped">1<' in page.text
    assert 'data-count="all">2<' in page.text
    stopped = await dash.get("/dashboard/?status=stopped")
    assert "Alpha" in stopped.text and "Beta" not in stopped.text
    connecting = await dash.get("/dashboard/?status=connecting")
    assert "Beta" in connecting.text and "Alpha" not in connecting.text
    bad = await dash.get("/dashboard/?status=sideways")
    assert bad.status_code == 400


async def test_the_session_page_shows_status_chart_keys_rate_limit_webhooks_and_timeline(
    api: Api,
) -> None:
    dash, session_id = await with_session(api)
    page = await dash.get(f"/dashboard/sessions/{session_id}")
    assert page.status_code == 200
    text = page.text
    assert "<h1>Support</h1>" in text
    assert 'data-state="connecting"' in text
    assert 'role="img" aria-labelledby="chart-summary"' in text
    assert text.count('<rect class="bar') == 30
    assert "Uptime by day over the last 30 days" in text
    assert "API keys" in text and "default" in text
    assert "The default: 1000 requests per minute." in text
    assert "No webhook sends this session" in text
    assert 'data-event="Created"' in text and "by admin" in text
    assert 'data-event="ApiKeyIssued"' in text
    assert "Delete…" in text


async def test_stop_reconnect_key_rate_limit_and_delete_go_through_the_application(
    api: Api,
) -> None:
    dash, session_id = await with_session(api)
    base = f"/dashboard/sessions/{session_id}"
    await dash.get(base)
    # Check stopping, then reconnecting (new QR codes: it was never linked).
    stopped = await dash.post(base + "/stop")
    assert stopped.status_code == 303 and stopped.headers["location"] == base
    page = await dash.get(base)
    assert 'data-state="stopped"' in page.text
    assert "The session is stopped." in page.text
    assert (await dash.post(base + "/reconnect")).status_code == 303
    page = await dash.get(base)
    assert 'data-state="connecting"' in page.text
    assert "Reconnecting the session." in page.text
    # Check a key made on the page works on the API, then is refused once revoked.
    made = await dash.post(base + "/keys", {"label": "crm"})
    assert made.status_code == 303
    page = await dash.get(base)
    key = re.search(r'value="(sdk_[^"]+)"', page.text)
    assert key
    key_id = re.search(r"\((key_[^)]+)\)</strong>", page.text)
    assert key_id
    headers = {"x-api-key": key.group(1)}
    assert (await api.client.get(f"/sessions/{session_id}", headers=headers)).status_code == 200
    assert (await dash.post(f"{base}/keys/{key_id.group(1)}/revoke")).status_code == 303
    assert (await api.client.get(f"/sessions/{session_id}", headers=headers)).status_code == 401
    # Check bad input is refused with 422 and a message, and good input saved.
    too_long = await dash.post(base + "/keys", {"label": "x" * 65})
    assert too_long.status_code == 422
    assert "A key&#39;s label is 1 to 64" in too_long.text
    zero = await dash.post(base + "/rate-limit", {"requests_per_minute": "0"})
    assert zero.status_code == 422
    assert "Enter a whole number from 1 to" in zero.text
    huge = await dash.post(base + "/rate-limit", {"requests_per_minute": "9" * 5000})
    assert huge.status_code == 422  # not a 500 from int() refusing 5,000 digits
    assert (
        await dash.post(base + "/rate-limit", {"requests_per_minute": "120"})
    ).status_code == 303
    body = (await api.client.get(f"/sessions/{session_id}", headers=ADMIN)).json()
    assert body["rateLimit"] == {"requestsPerMinute": 120, "isDefault": False}
    # Check the delete asks first, saying that every key will be revoked, then deletes.
    confirm = await dash.get(base + "/delete")
    assert "All API keys of this session will be revoked" in confirm.text
    assert "(1 active key)" in confirm.text
    deleted = await dash.post(base + "/delete")
    assert deleted.status_code == 303 and deleted.headers["location"] == "/dashboard/"
    listing = await dash.get("/dashboard/")
    assert "deleted; all its API keys are revoked" in listing.text
    assert (await api.client.get(f"/sessions/{session_id}", headers=ADMIN)).status_code == 404
    gone = await dash.get(base)
    assert gone.status_code == 404
    assert "There is no session" in gone.text
    types = [e["type"] for e in await events_of_deleted(api, session_id)]
    assert types[-2:] == ["KeysRevoked", "Deleted"] or "Deleted" in types


async def events_of_deleted(api: Api, session_id: str) -> list[dict[str, object]]:
    response = await api.client.get("/events?limit=1000", headers=ADMIN)
    return [e for e in response.json()["items"] if e["sessionId"] == session_id]


async def test_a_conflicting_action_is_an_error_page_that_records_nothing(api: Api) -> None:
    dash, session_id = await with_session(api)
    await qr_shown(api, session_id)
    await dash.get(f"/dashboard/sessions/{session_id}")
    before = len(await events_of(api, session_id))
    response = await dash.post(f"/dashboard/sessions/{session_id}/reconnect")
    assert response.status_code == 409
    assert "Not possible now" in response.text
    assert len(await events_of(api, session_id)) == before


async def test_pairing_by_phone_gives_a_code_and_a_bad_number_is_refused(api: Api) -> None:
    dash, session_id = await with_session(api)
    base = f"/dashboard/sessions/{session_id}"
    await qr_shown(api, session_id)
    await dash.get(base + "/link")
    bad = await dash.post(base + "/pair-code", {"phone": "12"})
    assert bad.status_code == 422
    assert "is not a valid phone number" in bad.text or "is not a phone number" in bad.text
    good = await dash.post(base + "/pair-code", {"phone": "+1 415 555 0123"})
    assert good.status_code == 303, good.text
    page = await dash.get(base + "/link")
    code = re.search(r'id="pair-code">([^<]+)<', page.text)
    assert code and len(code.group(1)) >= 8
    assert "Code for +14155550123" in page.text


async def test_no_page_loads_anything_from_another_origin(api: Api) -> None:
    dash, session_id = await with_session(api)
    pages = [
        "/dashboard/",
        "/dashboard/sessions/new",
        f"/dashboard/sessions/{session_id}",
        f"/dashboard/sessions/{session_id}/link",
        f"/dashboard/sessions/{session_id}/delete",
    ]
    for path in pages:
        text = (await dash.get(path)).text
        assert not EXTERNAL.findall(text), path
        links = re.findall(r'(?:src|href|action)="([^"]*)"', text)
        assert not [link for link in links if link.startswith("//")], path
    for asset in ("dashboard.css", "dashboard.js"):
        response = await api.client.get(f"/dashboard/static/{asset}")
        assert response.status_code == 200
        assert "set-cookie" not in response.headers  # signed in, yet no cookie on a file
        assert "http://" not in response.text and "https://" not in response.text
    await dash.post("/dashboard/sign-out")
    assert not EXTERNAL.findall((await dash.get("/dashboard/sign-in")).text)


async def test_the_session_page_lists_the_sessions_webhooks_with_their_deliveries(
    api: Api,
) -> None:
    dash, session_id = await with_session(api)
    hook = {
        "url": "http://127.0.0.1:9/hooks",
        "events": ["session.stopped"],
        "sessionId": session_id,
    }
    created = await api.client.post("/webhooks", json=hook, headers=ADMIN)
    assert created.status_code == 201, created.text
    await dash.get(f"/dashboard/sessions/{session_id}")
    await dash.post(f"/dashboard/sessions/{session_id}/stop")

    async def listed() -> Any:  # the delivery is enqueued by the webhook view, then tried
        page = await dash.get(f"/dashboard/sessions/{session_id}")
        return page if 'data-label="Event">session.stopped<' in page.text else None

    page = await eventually(listed)
    assert "http://127.0.0.1:9/hooks" in page.text
    assert 'data-label="Event">session.stopped<' in page.text
