"""The dashboard's key form offers scopes and an expiry, the key list shows them, and the key
made there does only what its scopes allow on the JSON API."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import admin_json, screenshot, sign_in


def test_a_key_made_with_scopes_and_an_expiry_is_listed_with_them_and_limited_by_them(
    page: Page, api: httpx.Client
) -> None:
    created = admin_json(api, "POST", "/sessions", json={"name": "Keys form"})
    sid = created["sessionId"]
    sign_in(page)
    page.goto(f"/dashboard/sessions/{sid}#keys")

    # Check the first key is listed with full access and no expiry.
    first = page.locator(f'[data-key="{created["apiKey"]["keyId"]}"]')
    expect(first.locator(".key-scopes")).to_have_text("All (full access)")
    expect(first.locator(".key-expires")).to_have_text("Never")

    # Check the form offers every scope (each with its label) and the expiries; make a
    # read-only key that expires in an hour, with the keyboard for the checkbox.
    for scope in ("status:read", "messages:send", "messages:read", "session:control"):
        expect(page.get_by_label(scope, exact=False)).to_be_visible()
    page.get_by_label("Label of a new key").fill("reader")
    page.get_by_label("status:read", exact=False).focus()
    page.keyboard.press("Space")
    expect(page.get_by_label("status:read", exact=False)).to_be_checked()
    page.get_by_label("The new key expires").select_option(label="In 1 hour")
    page.get_by_role("button", name="Create key").click()
    new_key = page.locator("[data-new-key]").input_value()
    assert new_key.startswith("sdk_")
    expect(page.locator(".key-terms")).to_contain_text("Scopes: status:read; expires 20")
    screenshot(page, "key-form-scoped-key")

    # Check the list shows its scope and an expiry about an hour ahead, and it is active.
    key_id = page.locator("[data-key]").filter(has_text="reader").get_attribute("data-key")
    row = page.locator(f'[data-key="{key_id}"]')
    expect(row.locator(".key-scopes")).to_have_text("status:read")
    expect(row.locator(".key-expires")).not_to_have_text("Never")
    expect(row).to_contain_text("Active")
    listed = admin_json(api, "GET", f"/sessions/{sid}/keys")["items"]
    item = next(i for i in listed if i["keyId"] == key_id)
    assert item["scopes"] == ["status:read"]
    assert item["expiresAt"] is not None

    # Check the key does what its scope allows, and is refused naming the scope it lacks.
    headers = {"x-api-key": new_key}
    assert api.get(f"/sessions/{sid}/status", headers=headers).status_code == 200
    sent = api.post(
        f"/sessions/{sid}/messages", json={"to": "+14155550123", "text": "hi"}, headers=headers
    )
    assert sent.status_code == 403 and sent.json()["requiredScope"] == "messages:send"

    # Check an expiry the list does not offer is refused with the error tied to the field.
    page.get_by_label("Label of a new key").fill("forged")
    page.locator("#key-expires option").first.evaluate("o => { o.value = 'forever' }")
    page.get_by_label("The new key expires").select_option(index=0)
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("alert")).to_contain_text("Choose when the key expires")
    assert all(
        i["label"] != "forged" for i in admin_json(api, "GET", f"/sessions/{sid}/keys")["items"]
    )

    # Check a key past its expiry is listed as expired, without a Revoke button.
    short = admin_json(
        api, "POST", f"/sessions/{sid}/keys", json={"label": "short", "ttlSeconds": 1}
    )
    time.sleep(1.2)
    page.goto(f"/dashboard/sessions/{sid}#keys")
    expired = page.locator(f'[data-key="{short["keyId"]}"]')
    expect(expired).to_contain_text("Expired")
    expect(expired.get_by_role("button")).to_have_count(0)
    screenshot(page, "key-form-expired-key")
