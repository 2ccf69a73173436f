"""A restricted session in a real browser: the banner with what to do appears live on the
session's page, the list marks it, and both clear live once the session is linked again."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import admin_json, mark, same_document, scan, screenshot, sign_in
from tests.e2e.conftest import ADMIN
from tests.waiting import eventually

pytestmark = pytest.mark.browser


def test_a_restriction_shows_a_banner_live_and_clears_when_linked_again(
    page: Page, api: httpx.Client
) -> None:
    session_id = admin_json(api, "POST", "/sessions", json={"name": "Shop"})["sessionId"]
    eventually(
        lambda: api.post(f"/simulator/sessions/{session_id}/scan", headers=dict(ADMIN)).is_success,
        what="the first scan",
    )
    admin_json(
        api,
        "POST",
        f"/sessions/{session_id}/messages",
        json={"to": "+14155550123", "text": "sent at once"},
    )
    eventually(lambda: _queue_depth(api, session_id) == 0, what="the first message sent")
    sign_in(page)
    page.goto(f"/dashboard/sessions/{session_id}")
    banner = page.locator("[data-restriction]")
    expect(banner).to_have_count(0)
    mark(page)

    # Check the phone's logout brings the banner, with what to do, without a reload.
    admin_json(api, "POST", f"/simulator/sessions/{session_id}/logout")
    admin_json(
        api,
        "POST",
        f"/sessions/{session_id}/messages",
        json={"to": "+14155550123", "text": "held"},
    )
    expect(banner).to_have_attribute("data-restriction", "logged_out")
    expect(banner).to_contain_text("Logged out from the phone")
    expect(banner).to_contain_text("Sending is paused")
    expect(banner).to_contain_text("scan the new QR code")
    expect(banner).to_contain_text("1 message waits")
    assert same_document(page)
    screenshot(page, "10-session-restricted")

    # Check the list marks it too.
    page.goto("/dashboard/")
    row = page.locator(f'tr[data-session="{session_id}"]')
    expect(row.locator(".restricted")).to_have_text("restricted: sending paused")

    # Check linking it again clears the banner live, and the held message goes out.
    page.goto(f"/dashboard/sessions/{session_id}")
    mark(page)
    admin_json(api, "POST", f"/sessions/{session_id}/reconnect")
    expect(banner).to_have_count(1)  # a reconnect alone lifts nothing: the phone must scan
    eventually(
        lambda: api.get(f"/sessions/{session_id}/qr", headers=dict(ADMIN)).status_code == 200,
        what="a new QR code",
    )
    scan(api, session_id)
    expect(banner).to_have_count(0)
    assert same_document(page)
    eventually(lambda: _queue_depth(api, session_id) == 0, what="the held message sent")


def _queue_depth(api: httpx.Client, session_id: str) -> int:
    depth: int = admin_json(api, "GET", f"/sessions/{session_id}/status")["metrics"]["queueDepth"]
    return depth
