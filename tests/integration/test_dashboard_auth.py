"""The dashboard's door: sign-in with the admin key, the cookie, CSRF on every form, sign-out.
The JSON API's own key check is untouched."""

from __future__ import annotations

import re

from tests.conftest import ADMIN_KEY
from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import Dashboard


async def test_the_root_and_every_page_lead_to_the_sign_in_when_not_signed_in(api: Api) -> None:
    root = await api.client.get("/", follow_redirects=False)
    assert root.status_code == 302
    assert root.headers["location"] == "/dashboard/"
    for path in ("/dashboard/", "/dashboard/sessions/new", "/dashboard/sessions/sess_x/link"):
        response = await api.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/dashboard/sign-in?next=/dashboard")
    live = await api.client.get("/dashboard/live/sessions")
    assert live.status_code == 401


async def test_a_wrong_admin_key_is_refused_with_401_and_never_echoed(api: Api) -> None:
    dash = Dashboard(api.client)
    response = await dash.sign_in("sda_wrong-key-but-long-enough-1234")
    assert response.status_code == 401
    assert "That is not the admin key" in response.text
    assert "sda_wrong-key-but-long-enough-1234" not in response.text
    assert (await dash.get("/dashboard/")).status_code == 303  # still signed out
    empty = await dash.post("/dashboard/sign-in", {"admin_key": "  "})
    assert empty.status_code == 422
    assert "Enter the admin key" in empty.text


async def test_signing_in_sets_an_http_only_strict_cookie_and_opens_the_list(api: Api) -> None:
    dash = Dashboard(api.client)
    response = await dash.sign_in()
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("sessiond_dashboard=")
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/dashboard" in cookie
    assert ADMIN_KEY not in cookie
    page = await dash.get("/dashboard/")
    assert page.status_code == 200
    assert "<h1>Sessions</h1>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    # The API still wants its header: the dashboard's cookie opens nothing there.
    assert (await api.client.get("/sessions")).status_code == 401


async def test_a_form_without_this_sessions_csrf_token_is_refused_and_records_nothing(
    api: Api,
) -> None:
    dash = Dashboard(api.client)
    await dash.sign_in()
    await dash.get("/dashboard/sessions/new")
    missing = await dash.post("/dashboard/sessions", {"name": "Forged"}, token=False)
    assert missing.status_code == 403
    assert "This form has expired" in missing.text
    wrong = await dash.client.post(
        "/dashboard/sessions", data={"name": "Forged", "csrf_token": "x" * 43}
    )
    assert wrong.status_code == 403
    as_json = await dash.client.post(
        "/dashboard/sessions", json={"name": "Forged", "csrf_token": dash.token}
    )
    assert as_json.status_code == 403
    listed = await api.client.get("/sessions", headers=ADMIN)
    assert listed.json()["count"] == 0


async def test_signing_in_needs_the_token_of_the_sign_in_page(api: Api) -> None:
    response = await api.client.post(
        "/dashboard/sign-in", data={"admin_key": ADMIN_KEY}, follow_redirects=False
    )
    assert response.status_code == 403
    assert (await api.client.get("/dashboard/", follow_redirects=False)).status_code == 303


async def test_a_token_seen_before_signing_in_is_worthless_after(api: Api) -> None:
    dash = Dashboard(api.client)
    await dash.get("/dashboard/sign-in")
    before = dash.token
    await dash.post("/dashboard/sign-in", {"admin_key": ADMIN_KEY})
    response = await dash.client.post(
        "/dashboard/sessions", data={"name": "X", "csrf_token": before}, follow_redirects=False
    )
    assert response.status_code == 403


async def test_a_tampered_cookie_signs_out(api: Api) -> None:
    dash = Dashboard(api.client)
    await dash.sign_in()
    value = api.client.cookies["sessiond_dashboard"]
    flipped = value[:20] + ("A" if value[20] != "A" else "B") + value[21:]
    api.client.cookies.set("sessiond_dashboard", flipped, path="/dashboard")
    response = await api.client.get("/dashboard/", follow_redirects=False)
    assert response.status_code == 303


async def test_signing_out_clears_the_cookie(api: Api) -> None:
    dash = Dashboard(api.client)
    await dash.sign_in()
    await dash.get("/dashboard/")
    response = await dash.post("/dashboard/sign-out")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/sign-in?signed_out=true"
    assert re.search(r"sessiond_dashboard=null; .*expires=", response.headers["set-cookie"], re.I)
    assert (await dash.get("/dashboard/")).status_code == 303
    signed_out = await dash.get("/dashboard/sign-in?signed_out=true")
    assert "You are signed out." in signed_out.text


async def test_after_signing_in_the_operator_lands_where_they_were_going_never_elsewhere(
    api: Api,
) -> None:
    dash = Dashboard(api.client)
    await dash.get("/dashboard/sign-in?next=/dashboard/sessions/new")
    response = await dash.post(
        "/dashboard/sign-in", {"admin_key": ADMIN_KEY, "next": "/dashboard/sessions/new"}
    )
    assert response.headers["location"] == "/dashboard/sessions/new"
    await dash.get("/dashboard/sessions/new")
    await dash.post("/dashboard/sign-out")
    await dash.get("/dashboard/sign-in")
    away = await dash.post("/dashboard/sign-in", {"admin_key": ADMIN_KEY, "next": "//evil.test/"})
    assert away.status_code == 303, away.text
    assert away.headers["location"] == "/dashboard/"


async def test_the_dashboard_is_not_in_the_openapi_document(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    assert not [path for path in document["paths"] if path.startswith("/dashboard") or path == "/"]
