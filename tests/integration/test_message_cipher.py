"""With SESSIOND_CIPHER_KEY set, message texts (and every event and snapshot) are stored
encrypted, while the API still shows them to whoever may read them."""

from __future__ import annotations

import pytest
from eventsourcing.cryptography import AESCipher

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import connected_session, send, simulate, stored_states, until_status

SECRET = "the vault code is 7321-alpha"
INBOUND_SECRET = "meet me at the usual place"


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_CIPHER_KEY": AESCipher.create_key(32), "SESSIOND_SEND_INTERVAL": "0.05"}


async def test_message_texts_are_encrypted_at_rest_and_readable_through_the_api(
    api: Api,
) -> None:
    created = await connected_session(api, "Secret")
    queued = (await send(api, created, SECRET)).json()
    await until_status(api, created, queued["messageId"], "sent")
    await simulate(api, created, "inbound", sender="+4915112345678", text=INBOUND_SECRET)
    for n in range(55):  # past the snapshot interval (50): snapshots are encrypted too
        await send(api, created, f"{SECRET} #{n}")

    tables = stored_states(api)
    assert all(tables.values()), f"events and snapshots stored: {list(tables)}"
    for state in (state for states in tables.values() for state in states):
        assert b"vault" not in state and b"usual place" not in state
        assert b"MessageQueued" not in state and b"Support" not in state
    shown = await api.client.get(
        f"/sessions/{created['sessionId']}/messages/{queued['messageId']}",
        headers=api.key(created),
    )
    assert shown.json()["text"] == SECRET
    inbound = await api.client.get(
        f"/sessions/{created['sessionId']}/messages?direction=inbound", headers=api.key(created)
    )
    assert inbound.json()["items"][0]["text"] == INBOUND_SECRET
    history = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    queued_events = [e for e in history.json()["items"] if e["type"] == "MessageQueued"]
    assert queued_events and all(e["data"]["text"] == "[redacted]" for e in queued_events)
