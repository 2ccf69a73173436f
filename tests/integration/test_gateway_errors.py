"""When the worker running a session fails at what it was asked (a pairing code, a simulator
action), the client gets a stable 502 problem that says so, never the worker's or library's
own text: that goes to the log only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import qr_shown, simulator

# What a library might say when it fails: addresses, credentials, file names.
LIBRARY_TEXT = (
    "dial tcp 10.9.8.7:5432: connect: connection refused "
    "(store postgresql://whatsmeow:s3cret@db.internal/store, /srv/sessiond/var/go.log)"
)


def failing(*args: Any) -> Any:
    raise RuntimeError(LIBRARY_TEXT)


def assert_bare_502(response: Any) -> None:
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "urn:sessiond:problem:gateway-failed"
    assert problem["title"] == "Bad gateway"
    assert problem["detail"] == (
        "the gateway worker running the session failed doing this; it was logged"
    )
    for leak in ("10.9.8.7", "s3cret", "db.internal", "/srv", "RuntimeError", "dial tcp"):
        assert leak not in response.text


async def test_a_worker_failure_answers_502_without_its_text(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    created = await api.create_session("Failing")
    sid = created["sessionId"]
    await qr_shown(api, sid)
    gateway = simulator(api)
    monkeypatch.setattr(gateway, "pair_phone", failing)
    monkeypatch.setattr(gateway, "scan", failing)

    # Check a pairing code the library fails to make, asked with the session's own key.
    paired = await api.client.post(
        f"/sessions/{sid}/pair-code", json={"phone": "+14155550123"}, headers=api.key(created)
    )
    assert_bare_502(paired)

    # Check a simulator action the worker fails at.
    scanned = await api.client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN)
    assert_bare_502(scanned)

    # Check the operator's log has the whole text, from the worker and from the API.
    assert caplog.text.count(LIBRARY_TEXT) >= 4
    assert "gateway request pair_code failed" in caplog.text
