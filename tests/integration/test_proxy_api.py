"""A session's proxy over HTTP, with the simulator gateway: set at creation or later, shown
with its password masked everywhere, refused when it is no proxy URL, honoured by the
simulator (a proxy that does not answer is `proxy_unreachable`, retried)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import eventually, simulate, simulator, status, uuid_of

SECRET = "hunter2-Pa55"


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_RETRY_BASE": "0.3", "SESSIOND_RETRY_CAP": "1"}


def listening() -> socket.socket:
    """A port on 127.0.0.1 that accepts connections (a proxy that answers, for the simulator)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(64)
    return server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def proxy_of(api: Api, created: dict[str, Any], headers: dict[str, str]) -> Any:
    response = await api.client.get(f"/sessions/{created['sessionId']}/proxy", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_proxy_set_at_creation_is_used_and_shown_masked(api: Api) -> None:
    with listening() as proxy:
        port = proxy.getsockname()[1]
        url = f"socks5://ann:{SECRET}@127.0.0.1:{port}"
        created = await api.create_session("Behind", proxy={"url": url})
        shown = f"socks5://ann:***@127.0.0.1:{port}"

        # Check the answers show the proxy with its password masked.
        assert created["proxy"] == shown
        assert (await proxy_of(api, created, api.key(created)))["url"] == shown

        # Check the simulated start went through it (its QR codes come once the proxy
        # answered: the worker may start the session a moment after it is created), and the
        # session links as usual.
        await eventually(lambda: _has_qr(api, created))
        assert simulator(api).proxy_of(uuid_of(created)) == url
        await simulate(api, created, "scan")
        assert (await status(api, created))["status"] == "connected"

    # Check the password is in no answer, history entry or export of the log.
    history = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    [proxy_set] = [e for e in history.json()["items"] if e["type"] == "ProxySet"]
    assert proxy_set["data"]["url"] == shown
    assert proxy_set["data"]["password"] == "[redacted]"
    global_log = await api.client.get("/events?after=0&limit=1000", headers=ADMIN)
    session = await api.client.get(f"/sessions/{created['sessionId']}", headers=ADMIN)
    for text in (history.text, global_log.text, session.text, json.dumps(created)):
        assert SECRET not in text


async def _has_qr(api: Api, created: dict[str, Any]) -> bool:
    response = await api.client.get(f"/sessions/{created['sessionId']}/qr", headers=ADMIN)
    return response.status_code == 200


async def test_a_session_key_sets_and_clears_its_own_proxy_for_the_next_connect(api: Api) -> None:
    created = await api.create_session("Later")
    other = await api.create_session("Other")
    base = f"/sessions/{created['sessionId']}/proxy"
    assert (await proxy_of(api, created, ADMIN))["url"] is None

    with listening() as proxy:
        port = proxy.getsockname()[1]
        url = f"http://bob:{SECRET}@127.0.0.1:{port}"
        # Check another session's key cannot reach it (existence never revealed).
        foreign = await api.client.put(base, json={"url": url}, headers=api.key(other))
        assert foreign.status_code == 404, foreign.text

        answer = await api.client.put(base, json={"url": url}, headers=api.key(created))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "sessionId": created["sessionId"],
            "url": f"http://bob:***@127.0.0.1:{port}",
        }
        # Check the same proxy again records nothing.
        events_before = await api.client.get(
            f"/sessions/{created['sessionId']}/events", headers=ADMIN
        )
        again = await api.client.put(base, json={"url": url}, headers=api.key(created))
        assert again.status_code == 200
        events_after = await api.client.get(
            f"/sessions/{created['sessionId']}/events", headers=ADMIN
        )
        assert len(events_after.json()["items"]) == len(events_before.json()["items"])

        # Check the next connect (stop, reconnect) goes through it.
        await api.client.post(f"/sessions/{created['sessionId']}/stop", headers=api.key(created))
        await api.client.post(
            f"/sessions/{created['sessionId']}/reconnect", headers=api.key(created)
        )
        await eventually(lambda: _has_qr(api, created))
        assert simulator(api).proxy_of(uuid_of(created)) == url

    # Check a clear answers 204 (twice), and the next connect dials directly.
    for _ in range(2):
        cleared = await api.client.delete(base, headers=api.key(created))
        assert cleared.status_code == 204, cleared.text
    assert (await proxy_of(api, created, api.key(created)))["url"] is None
    await api.client.post(f"/sessions/{created['sessionId']}/stop", headers=ADMIN)
    await api.client.post(f"/sessions/{created['sessionId']}/reconnect", headers=ADMIN)
    await eventually(lambda: _has_qr(api, created))
    assert simulator(api).proxy_of(uuid_of(created)) is None
    history = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    types = [e["type"] for e in history.json()["items"]]
    assert types.count("ProxySet") == 1 and types.count("ProxyCleared") == 1
    assert SECRET not in history.text


BAD_URLS = [
    "ftp://proxy.example.com:21",  # scheme
    "socks5h://proxy.example.com:1080",
    "proxy.example.com:1080",
    "socks5://proxy.example.com",  # no port
    "socks5://:1080",  # no host
    "http://proxy.example.com:99999",
    "http://proxy.example.com:8080/path",
    "garbage",
    "socks5://u:p@ss@@:x",
]


@pytest.mark.parametrize("url", BAD_URLS)
async def test_a_bad_proxy_url_is_a_422_problem_and_records_nothing(api: Api, url: str) -> None:
    created = await api.create_session("Strict")
    base = f"/sessions/{created['sessionId']}/proxy"

    refused = await api.client.put(base, json={"url": url}, headers=api.key(created))
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:sessiond:problem:invalid-proxy"

    # Check it records nothing (the worker may record the session's QR code meanwhile), and
    # a session is not created with it either.
    after = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    assert not [e for e in after.json()["items"] if e["type"].startswith("Proxy")]
    listed = (await api.client.get("/sessions", headers=ADMIN)).json()["count"]
    at_creation = await api.client.post(
        "/sessions", json={"name": "Never", "proxy": {"url": url}}, headers=ADMIN
    )
    assert at_creation.status_code == 422, at_creation.text
    assert (await api.client.get("/sessions", headers=ADMIN)).json()["count"] == listed


@pytest.mark.parametrize(
    "body", [{}, {"url": 5}, {"url": ""}, {"url": "socks5://h:1", "extra": 1}, [1], "x"]
)
async def test_a_body_that_is_not_a_proxy_is_a_422_problem(api: Api, body: Any) -> None:
    created = await api.create_session("Strict")
    refused = await api.client.put(
        f"/sessions/{created['sessionId']}/proxy", json=body, headers=api.key(created)
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_the_key_is_checked_before_the_body(api: Api) -> None:
    created = await api.create_session("Guarded")
    base = f"/sessions/{created['sessionId']}/proxy"
    for headers in ({}, {"x-api-key": "sdk_" + "0" * 40}):
        for request in (
            api.client.put(base, content=b"{not json", headers=headers),
            api.client.put(base, json={"url": "garbage"}, headers=headers),
            api.client.delete(base, headers=headers),
            api.client.get(base, headers=headers),
        ):
            answer = await request
            assert answer.status_code == 401, answer.text


async def test_a_proxy_that_does_not_answer_is_proxy_unreachable_and_retried(api: Api) -> None:
    port = closed_port()
    created = await api.create_session(
        "Refused", proxy={"url": f"socks5://carol:{SECRET}@127.0.0.1:{port}"}
    )

    async def retried() -> dict[str, Any] | None:
        body = await status(api, created)
        ok = body["reason"] == "proxy_unreachable" and body["retryAttempt"] >= 2
        return body if ok else None

    body = await eventually(retried)
    assert f"127.0.0.1:{port}" in body["detail"] and SECRET not in body["detail"]
    assert body["status"] == "disconnected" and body["nextRetryAt"] is not None

    # Check a proxy that answers lets the next retry through.
    with listening() as proxy:
        new = f"socks5://carol:{SECRET}@127.0.0.1:{proxy.getsockname()[1]}"
        answer = await api.client.put(
            f"/sessions/{created['sessionId']}/proxy", json={"url": new}, headers=ADMIN
        )
        assert answer.status_code == 200
        await eventually(lambda: _has_qr(api, created))


async def test_the_simulator_never_dials_a_proxy_off_this_machine(api: Api) -> None:
    url = f"socks5://fay:{SECRET}@proxy.invalid:1080"  # never resolved, never dialled
    created = await api.create_session("Elsewhere", proxy={"url": url})
    await eventually(lambda: _has_qr(api, created))
    assert simulator(api).proxy_of(uuid_of(created)) == url
