"""With SESSIOND_CIPHER_KEY set, a session's proxy password is stored encrypted, like every
event and snapshot, while the next connect still dials with it."""

from __future__ import annotations

import pytest
from eventsourcing.cryptography import AESCipher

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import stored_states, uuid_of

SECRET = "correct-horse-battery"


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_CIPHER_KEY": AESCipher.create_key(32)}


async def test_a_proxy_password_is_encrypted_at_rest(api: Api) -> None:
    created = await api.create_session(
        "Vaulted", proxy={"url": f"socks5://dora:{SECRET}@127.0.0.1:9"}
    )
    base = f"/sessions/{created['sessionId']}/proxy"
    for n in range(55):  # past the snapshot interval (50): snapshots are encrypted too
        port = 1000 + n
        answer = await api.client.put(
            base, json={"url": f"http://dora:{SECRET}{n}@127.0.0.1:{port}"}, headers=ADMIN
        )
        assert answer.status_code == 200, answer.text

    tables = stored_states(api)
    assert all(tables.values()), f"events and snapshots stored: {list(tables)}"
    for state in (state for states in tables.values() for state in states):
        assert SECRET.encode() not in state and b"ProxySet" not in state and b"dora" not in state

    # Check the session still knows it (its next connect dials with it), and shows it masked.
    session = api.container.app.load(uuid_of(created))
    assert session.proxy is not None and session.proxy.password == f"{SECRET}54"
    shown = (await api.client.get(base, headers=ADMIN)).json()["url"]
    assert shown == "http://dora:***@127.0.0.1:1054"
