"""The seed's path through the dashboard in a real browser: sign in, create a session, see the
QR code turn over, scan it, see "Connected" appear without a reload, stop, reconnect, make and
revoke a key, delete with confirmation — and the session's keys are then refused by the API."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import mark, same_document, scan, screenshot, session_id_of, sign_in
from tests.e2e.conftest import ADMIN

pytestmark = pytest.mark.browser
STATUS = "#session-status"


def test_the_operators_path_from_sign_in_to_delete(page: Page, api: httpx.Client) -> None:
    # Check a wrong key is refused with a clear message, and the right one lets the operator in.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?next="))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "01-sign-in")
    sign_in(page, "sda_not-the-admin-key-0123456789")
    expect(page.get_by_role("alert")).to_have_text(re.compile("That is not the admin key"))
    sign_in(page)
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()

    # Check an invalid name is refused with the error shown, then create the session.
    page.get_by_role("link", name="New session").first.click()
    page.get_by_label("Name").fill("   ")
    page.get_by_role("button", name="Create and show the QR code").click()
    expect(page.get_by_role("alert")).to_have_text("Name must not be empty.")
    page.get_by_label("Name").fill("Support")
    page.get_by_role("button", name="Create and show the QR code").click()
    expect(page.get_by_role("heading", name="Link “Support” to a phone")).to_be_visible()
    session_id = session_id_of(page)
    first_key = page.locator("[data-new-key]").input_value()
    assert first_key.startswith("sdk_")

    # Check the QR code is shown large, then replaced live by the next one (no reload).
    expect(page.locator(f"{STATUS} figure.qr svg")).to_be_visible()
    expect(page.locator(f"{STATUS} figcaption")).to_contain_text(re.compile(r"QR code \d+ of 40"))
    expect(page.locator(f"{STATUS} figcaption")).to_contain_text(re.compile(r"expires in \d+ s"))
    assert page.locator(f"{STATUS} figure.qr svg").bounding_box()["width"] >= 250  # type: ignore[index]
    screenshot(page, "02-new-session-qr")
    mark(page)
    attempt = int(page.locator("figure.qr").get_attribute("data-attempt") or "0")
    expect(page.locator(f'figure.qr[data-attempt="{attempt + 1}"]')).to_be_visible(timeout=10_000)
    assert same_document(page)

    # Check the scan shows "Connected" by itself, without a navigation.
    scan(api, session_id)
    expect(page.locator(f"{STATUS} .connected-now")).to_contain_text("Connected")
    expect(page.locator("figure.qr")).to_have_count(0)
    assert same_document(page)
    assert page.url.endswith(f"/dashboard/sessions/{session_id}/link")

    # Check the session page: status, metrics, chart, keys, timeline.
    page.get_by_role("link", name="its page").click()
    expect(page.get_by_role("heading", name="Support", exact=True)).to_be_visible()
    expect(page.locator(f"{STATUS} [data-state]")).to_have_text("Connected")
    expect(page.locator("[data-health]")).to_have_text("healthy")
    expect(page.locator("svg[aria-labelledby=chart-summary] rect")).to_have_count(30)
    expect(page.locator('#session-timeline [data-event="Connected"]')).to_have_count(1)
    screenshot(page, "03-session-page")

    # Check stop, then reconnect (the linked device is resumed: no scan needed).
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(f"{STATUS} [data-state]")).to_have_text("Stopped")
    page.get_by_role("button", name="Reconnect").click()
    expect(page.locator(f"{STATUS} [data-state]")).to_have_text("Connected")

    # Check that when the phone unlinks the page says so live, and a reconnect shows a new QR.
    mark(page)
    response = api.post(f"/simulator/sessions/{session_id}/logout", headers=ADMIN)
    assert response.status_code == 200, response.text
    expect(page.locator(f"{STATUS} [data-state]")).to_have_text("Disconnected")
    expect(page.locator(STATUS)).to_contain_text("logged out")
    assert same_document(page)
    page.get_by_role("button", name="Reconnect").click()
    expect(page.locator(f"{STATUS} figure.qr svg")).to_be_visible()
    expect(page.locator(f"{STATUS} [data-state]")).to_have_text("Connecting")

    # Check a key made here is shown once, works on the JSON API, and is refused once revoked.
    page.get_by_label("Label of a new key").fill("crm")
    page.get_by_role("button", name="Create key").click()
    new_key = page.locator("[data-new-key]").input_value()
    assert new_key.startswith("sdk_")
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    headers = {"x-api-key": new_key}
    assert api.get(f"/sessions/{session_id}/status", headers=headers).status_code == 200
    key_id = page.locator("[data-key]").filter(has_text="crm").get_attribute("data-key")
    page.get_by_role("button", name=f"Revoke key {key_id} (crm)").click()
    expect(page.locator(f'[data-key="{key_id}"]')).to_contain_text("Revoked")
    assert page.locator("[data-new-key]").count() == 0  # shown once only
    assert api.get(f"/sessions/{session_id}/status", headers=headers).status_code == 401

    # Check delete asks first, saying every key will be revoked; then the keys are refused.
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "All API keys of this session will be revoked"
    )
    screenshot(page, "04-delete-confirmation")
    page.get_by_role("button", name="Delete the session and revoke its keys").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("deleted; all its API keys are revoked")
    first = api.get(f"/sessions/{session_id}/status", headers={"x-api-key": first_key})
    assert first.status_code == 401
    assert api.get(f"/sessions/{session_id}", headers=ADMIN).status_code == 404
    expect(page.locator(f'tr[data-session="{session_id}"]')).to_have_count(0)

    # Check signing out leads back to the sign-in, and the pages are closed again.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto("/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
