"""A session's keys over HTTP: shown once, listed without the key, last use kept, revoked."""

from __future__ import annotations

from tests.integration.conftest import ADMIN, Api


async def test_keys_are_shown_once_listed_by_prefix_and_their_last_use_is_kept(api: Api) -> None:
    created = await api.create_session("Keys")
    session_id, first = created["sessionId"], api.key(created)

    # Check a new key is shown once, with a self-describing prefix and a label.
    issued = await api.client.post(
        f"/sessions/{session_id}/keys", json={"label": "crm"}, headers=first
    )
    assert issued.status_code == 201
    new = issued.json()
    assert new["key"].startswith("sdk_") and new["key"].startswith(new["prefix"])
    assert new["keyId"].startswith("key_") and new["label"] == "crm"

    # Check the new key works at once, and its use is recorded without an event.
    position = api.container.app.recorder.max_notification_id() or 0
    status = await api.client.get(
        f"/sessions/{session_id}/status", headers={"x-api-key": new["key"]}
    )
    assert status.status_code == 200
    # The worker may record the session's QR code meanwhile: only its events may follow.
    after = api.container.app.recorder.select_notifications(start=position + 1, limit=100)
    assert [n.topic for n in after if not n.topic.endswith(".QRIssued")] == []

    # Check the list holds both keys, never the key itself, with last use.
    listed = (await api.client.get(f"/sessions/{session_id}/keys", headers=ADMIN)).json()
    assert listed["count"] == 2
    assert all("key" not in item for item in listed["items"])
    by_id = {item["keyId"]: item for item in listed["items"]}
    assert by_id[new["keyId"]]["lastUsedAt"] is not None
    assert by_id[new["keyId"]]["prefix"] == new["prefix"]
    assert all(item["active"] for item in listed["items"])

    # Check revoking answers 204, twice over, and the key is refused after.
    for _ in range(2):
        revoked = await api.client.delete(
            f"/sessions/{session_id}/keys/{new['keyId']}", headers=first
        )
        assert revoked.status_code == 204
    refused = await api.client.get(
        f"/sessions/{session_id}/status", headers={"x-api-key": new["key"]}
    )
    assert refused.status_code == 401
    unknown = await api.client.delete(
        f"/sessions/{session_id}/keys/key_0000000000000000", headers=first
    )
    assert unknown.status_code == 404

    listed = (await api.client.get(f"/sessions/{session_id}/keys", headers=ADMIN)).json()
    revoked_item = next(i for i in listed["items"] if i["keyId"] == new["keyId"])
    assert revoked_item["active"] is False and revoked_item["revokedAt"] is not None


async def test_sessions_are_listed_and_filtered_by_status_and_labels(api: Api) -> None:
    eu = await api.create_session("EU support", labels={"useCase": "support", "region": "eu"})
    await api.create_session("US sales", labels={"useCase": "sales", "region": "us"})
    await api.create_session("Asia", labels={"region": "asia"})

    everything = (await api.client.get("/sessions", headers=ADMIN)).json()
    assert everything["count"] == 3
    in_eu = (await api.client.get("/sessions?label=region:eu", headers=ADMIN)).json()
    assert [s["sessionId"] for s in in_eu["items"]] == [eu["sessionId"]]
    both = await api.client.get("/sessions?label=region:eu&label=useCase:sales", headers=ADMIN)
    assert both.json()["count"] == 0
    connecting = (await api.client.get("/sessions?status=connecting", headers=ADMIN)).json()
    assert connecting["count"] == 3
    bad = await api.client.get("/sessions?label=region", headers=ADMIN)
    assert bad.status_code in (400, 422) and "label" in bad.json()["detail"]
