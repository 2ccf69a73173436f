"""The sessions list in a real browser: states in words and colour, filters, live updates,
and a narrow (375 px) screen."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import admin_json, mark, same_document, screenshot, sign_in

pytestmark = pytest.mark.browser


def test_the_list_filters_by_state_and_updates_live(page: Page, api: httpx.Client) -> None:
    alpha = admin_json(api, "POST", "/sessions", json={"name": "Alpha"})["sessionId"]
    admin_json(api, "POST", "/sessions", json={"name": "Beta"})
    sign_in(page)
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(2)
    mark(page)

    # Check a session created elsewhere appears without a reload, and a stop shows in grey.
    admin_json(api, "POST", "/sessions", json={"name": "Gamma"})
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("Gamma")  # newest first
    admin_json(api, "POST", f"/sessions/{alpha}/stop")
    alpha_row = page.locator(f'tr[data-session="{alpha}"]')
    expect(alpha_row.locator("[data-state]")).to_have_text("Stopped")
    expect(alpha_row.locator(".badge")).to_have_class("badge tone-off")
    assert same_document(page)
    screenshot(page, "05-sessions-list")

    # Check the filters, and that a filtered list updates live too.
    page.get_by_role("link", name="Stopped").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Alpha")
    expect(page.locator('[data-count="stopped"]')).to_have_text("1")
    mark(page)
    connecting = admin_json(api, "GET", "/sessions?status=connecting")["items"]
    admin_json(api, "POST", f"/sessions/{connecting[0]['sessionId']}/stop")
    expect(rows).to_have_count(2)
    expect(page.locator('[data-count="stopped"]')).to_have_text("2")
    assert same_document(page)
    page.get_by_role("link", name="Connecting").click()
    expect(rows).to_have_count(1)

    # Check a phone-sized screen: no sideways scrolling, every line readable.
    page.set_viewport_size({"width": 375, "height": 800})
    page.get_by_role("link", name="All").click()
    expect(rows).to_have_count(3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "06-sessions-list-375px")
    page.goto(f"/dashboard/sessions/{alpha}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "07-session-page-375px")
