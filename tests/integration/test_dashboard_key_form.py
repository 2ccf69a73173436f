"""The dashboard's key form over HTTP (as a browser without JavaScript posts it): scopes and an
expiry are recorded with the key; an unknown scope or expiry is 422 with nothing recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.conftest import Api
from tests.integration.dashboard_client import listed, with_session


async def key_items(api: Api, session_id: str) -> list[dict[str, object]]:
    return await listed(api, f"/sessions/{session_id}/keys")


async def test_the_key_form_records_scopes_and_expiry_and_refuses_what_it_does_not_offer(
    api: Api,
) -> None:
    dash, session_id = await with_session(api, "Form")
    base = f"/dashboard/sessions/{session_id}"
    await dash.get(base)

    # Check ticked scopes and a chosen expiry are the key's.
    before = datetime.now(UTC)
    made = await dash.post(
        base + "/keys",
        {"label": "ops", "scopes": ["session:control", "status:read"], "expires": "7d"},
    )
    assert made.status_code == 303, made.text
    page = await dash.get(base)
    assert "status:read" in page.text and "session:control" in page.text
    # The timeline shows the recorded scopes as words, not as a Python list.
    assert "scopes: status:read, session:control" in page.text
    (ops,) = [i for i in await key_items(api, session_id) if i["label"] == "ops"]
    assert ops["scopes"] == ["status:read", "session:control"]
    expires_at = datetime.fromisoformat(str(ops["expiresAt"]))
    assert before + timedelta(days=7) <= expires_at <= datetime.now(UTC) + timedelta(days=7)

    # Check no scope ticked and "never" is full access, forever.
    assert (
        await dash.post(base + "/keys", {"label": "full", "expires": "never"})
    ).status_code == 303
    (full,) = [i for i in await key_items(api, session_id) if i["label"] == "full"]
    assert (full["scopes"], full["expiresAt"]) == (None, None)

    # Check what the form does not offer is 422 with its message, and nothing is recorded.
    count = len(await key_items(api, session_id))
    bad_scope = await dash.post(base + "/keys", {"label": "x", "scopes": ["status:write"]})
    assert bad_scope.status_code == 422
    assert "A key&#39;s scopes are among status:read" in bad_scope.text
    bad_expiry = await dash.post(base + "/keys", {"label": "x", "expires": "forever"})
    assert bad_expiry.status_code == 422
    assert "Choose when the key expires from the list." in bad_expiry.text
    assert len(await key_items(api, session_id)) == count
