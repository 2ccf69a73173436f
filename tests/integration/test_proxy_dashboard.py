"""The dashboard shows a session's proxy (its password masked), sets and removes it."""

from __future__ import annotations

from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import with_session

SECRET = "dash-Secret-77"


async def test_the_session_page_shows_sets_and_removes_the_proxy(api: Api) -> None:
    dash, session_id = await with_session(api, "Proxied")
    base = f"/dashboard/sessions/{session_id}"
    page = await dash.get(base)
    assert "WhatsApp is dialled directly" in page.text

    # Check a bad URL is refused with 422 and what to fix, and nothing is set.
    bad = await dash.post(base + "/proxy", {"url": "socks5://proxy.example.com"})
    assert bad.status_code == 422
    assert "names no port" in bad.text
    api_view = await api.client.get(f"/sessions/{session_id}/proxy", headers=ADMIN)
    assert api_view.json()["url"] is None

    # Check a good one is saved, shown masked, and never put back in the form.
    url = f"socks5://gus:{SECRET}@proxy.example.com:1080"
    saved = await dash.post(base + "/proxy", {"url": url})
    assert saved.status_code == 303 and saved.headers["location"].endswith("#proxy")
    page = await dash.get(base)
    assert "socks5://gus:***@proxy.example.com:1080" in page.text
    assert SECRET not in page.text  # neither in the card nor in the timeline
    api_view = await api.client.get(f"/sessions/{session_id}/proxy", headers=ADMIN)
    assert api_view.json()["url"] == "socks5://gus:***@proxy.example.com:1080"

    # Check an empty URL removes it.
    removed = await dash.post(base + "/proxy", {"url": ""})
    assert removed.status_code == 303
    page = await dash.get(base)
    assert "WhatsApp is dialled directly" in page.text and "Proxy removed." in page.text
