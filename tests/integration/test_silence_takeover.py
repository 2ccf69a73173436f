"""The silence watchdog in one process: a session recorded silent by a worker that went away
before checking it is checked by the worker that resumes it, from the recorded events alone
(the silence and its clock survive the resume); the simulator's silent mode refuses what
cannot happen."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from application.ports import InboundMessage
from domain.policy import SilencePolicy
from domain.values import Reason
from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import connected_session, eventually, status, uuid_of

PERIOD = timedelta(hours=1)  # the clock never runs out during the test by itself


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_SILENCE_AFTER": str(PERIOD.total_seconds())}


def events_of(api: Api, created: dict[str, Any]) -> list[Any]:
    return list(api.container.app.events.get(uuid_of(created)))


async def test_a_silence_its_worker_had_no_time_to_check_is_checked_by_the_next(api: Api) -> None:
    app = api.container.app
    created = await connected_session(api)
    uuid = uuid_of(created)
    app.record_received(
        uuid,
        InboundMessage(
            "3A01", "1415@s.whatsapp.net", "1415@s.whatsapp.net", "hi", datetime.now(UTC)
        ),
    )
    heard = app.load(uuid).heard_at
    assert heard is not None
    # The previous holder found it silent, then died before its check: its disconnection is
    # recorded as the next holder records it (gateway_lost), and the session is resumed.
    assert app.record_silent(uuid, SilencePolicy(PERIOD), datetime.now(UTC) + PERIOD)
    app.record_disconnected(uuid, Reason.GATEWAY_LOST.value, "no client was running it")

    async def checked() -> Any:
        ended = [e for e in events_of(api, created) if type(e).__name__ == "SilenceEnded"]
        return ended or None

    (ended,) = await eventually(checked)
    assert ended.cause == "checked"
    names = [type(e).__name__ for e in events_of(api, created)]
    assert names[-5:] == [
        "Silenced",
        "Disconnected",
        "ReconnectAttempted",
        "Connected",
        "SilenceEnded",
    ]
    session = app.load(uuid)
    assert session.heard_at == ended.timestamp and session.heard_at > heard
    await asyncio.sleep(0.5)  # nothing more follows: no recycle, no second silence
    assert len(events_of(api, created)) == len(names)
    shown = await status(api, created)
    assert (shown["status"], shown["health"], shown["healthReason"]) == (
        "connected",
        "healthy",
        None,
    )


async def test_the_simulators_silent_mode_refuses_what_cannot_happen(api: Api) -> None:
    created = await api.create_session("Pairing")
    url = f"/simulator/sessions/{created['sessionId']}/silent"
    # The key is checked before the body; a session key may not drive the simulator.
    refused = await api.client.post(url, json={"answersChecks": "no"})
    assert refused.status_code == 401
    forbidden = await api.client.post(url, headers=api.key(created), json={})
    assert forbidden.status_code == 403
    for body in ({"answersChecks": "no"}, {"answersChecks": False, "extra": 1}, [1]):
        bad = await api.client.post(url, headers=ADMIN, json=body)
        assert bad.status_code in (400, 422), bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")

    # A session that is not connected (showing QR codes) cannot go silent: 409.
    async def not_connected() -> Any:
        answer = await api.client.post(url, headers=ADMIN, json={"answersChecks": False})
        return answer if answer.status_code == 409 else None

    answer = await eventually(not_connected)
    assert answer.json()["type"] == "urn:sessiond:problem:simulator-refused"
    assert "not connected" in answer.json()["detail"]
    missing = await api.client.post(
        "/simulator/sessions/sess_" + "0" * 32 + "/silent", headers=ADMIN, json={}
    )
    assert missing.status_code == 404
