"""Webhooks with private targets refused (the default): a literal private address is refused
when registering, and a name that resolves to one is refused when connecting, so a loopback
canary receives nothing. And an endpoint failing for days is disabled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.webhooks.client import BlockedAddress, webhook_client
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import disabled_webhook, eventually
from tests.receiver import Receiver, receiver


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    # The default (public targets only); the tests register only loopback targets.
    return {"SESSIOND_WEBHOOK_RETRY_SCALE": "0.0001", "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "false"}


@pytest.fixture
def canary() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f000001", "127.1", "[::1]", "[::ffff:127.0.0.1]"]
)
async def test_a_literal_private_address_is_refused_when_registering(
    api: Api, canary: Receiver, host: str
) -> None:
    response = await api.client.post(
        "/webhooks",
        json={"url": f"http://{host}:{canary.port}/hook", "events": ["session.created"]},
        headers=ADMIN,
    )
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("invalid-url")


async def test_a_name_resolving_to_loopback_is_refused_when_connecting_and_not_revealed(
    api: Api, canary: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # A session's own endpoint, registered and read with the session's key.
    session = await api.create_session("Canary")
    key = api.key(session)
    response = await api.client.post(
        "/webhooks",
        json={"url": f"http://localhost:{canary.port}/hook", "events": ["session.stopped"]},
        headers=key,
    )
    assert response.status_code == 201, response.text
    webhook = response.json()
    stopped = await api.client.post(f"/sessions/{session['sessionId']}/stop", headers=key)
    assert stopped.status_code == 200, stopped.text
    url = f"/webhooks/{webhook['webhookId']}/deliveries"

    async def refused() -> Any:
        items = (await api.client.get(url, headers=key)).json()["items"]
        return items if items and items[0]["attempts"] >= 2 else None

    items = await eventually(refused)
    assert canary.received == []
    # Check the session key learns that it was refused, not where localhost resolves.
    errors = [items[0]["lastError"], *(a["error"] for a in items[0]["attemptLog"])]
    for error in errors:
        assert error.endswith("refused: not a public address"), error
        assert "127.0.0.1" not in error and "::1" not in error, error
    # Check the log has the whole story, for the operator.
    assert "resolves to non-public address" in caplog.text


async def test_an_endpoint_failing_for_days_is_disabled(api: Api) -> None:
    # Every delivery to it fails (its address is refused: loopback, and private targets are
    # not allowed here); it has been failing for four days when one more fails.
    response = await api.client.post(
        "/webhooks",
        json={"url": "http://localhost:9/hook", "events": ["session.created"]},
        headers=ADMIN,
    )
    webhook = response.json()
    datastore = api.container.app.factory.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=True) as curs:
        curs.execute(
            "UPDATE sessiond_webhook_endpoints SET failing_since = now() - interval '4 days' "
            "WHERE webhook_id = %s",
            (webhook["webhookId"],),
        )
    await api.create_session("The last straw")

    body = await disabled_webhook(api, webhook["webhookId"])
    assert "failing without a success for 4.0 days" in body["disabledReason"]

    async def recorded() -> Any:
        history = (await api.client.get("/events?after=0&limit=1000", headers=ADMIN)).json()
        return history if any(e["type"] == "WebhookDisabled" for e in history["items"]) else None

    history = await eventually(recorded)
    assert all(e["data"].get("secret") in (None, "[redacted]") for e in history["items"])


async def test_private_only_refuses_public_addresses_before_connecting() -> None:
    async with webhook_client(allow_private=True, private_only=True, connect_timeout=0.5) as client:
        with pytest.raises(BlockedAddress, match=r"^refused: not a private address") as refused:
            await client.post("http://93.184.216.34/hook", content=b"{}")
    assert "93.184" not in str(refused.value)
