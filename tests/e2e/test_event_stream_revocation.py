"""A stream does not outlive its key: revoking the key, or deleting its session, ends the open
stream within a second of the answer, on `serve` and on API processes apart with the
projector stopped (the revocations reach every API process without it)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.streams import data, inbound, linked_session, reading
from tests.waiting import eventually

#: The longest a stream may outlive the answer that revoked its key.
LIMIT = 1.0


def works(client: httpx.Client, path: str, key: dict[str, str]) -> bool:
    return client.get(path, headers=key).status_code == 200


def logged(process: Sessiond, line: str) -> bool:
    return line in process.log_path.read_text()


def new_key(
    client: httpx.Client, apis: list[Sessiond], session_id: str
) -> tuple[str, dict[str, str]]:
    """A key of the session that works on every API process."""
    issued = client.post(f"/sessions/{session_id}/keys", json={}, headers=ADMIN)
    assert issued.status_code == 201, issued.text
    key = {"x-api-key": issued.json()["key"]}
    for api in apis:
        with api.client() as on_it:
            eventually(partial(works, on_it, f"/sessions/{session_id}/status", key), "the key")
    return issued.json()["keyId"], key


def ended_within(stream: Any, answered_at: float, reason: str) -> None:
    ended = stream.wait_end(10)
    print(f"stream ended {ended - answered_at:.3f} s after the answer ({reason})")
    assert ended - answered_at < LIMIT, (
        f"the stream outlived the revocation by {ended - answered_at:.2f} s"
    )
    last = stream.events[-1]
    assert last.event == "end", stream.events
    assert data(last)["reason"] == reason


def test_revoking_a_key_or_deleting_its_session_ends_its_open_streams(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start("serve", {**sessiond_env, "SESSIOND_STREAM_HEARTBEAT": "5"})
    client = server.client()
    created = linked_session(client, "Revoked")
    sid, key = created["sessionId"], key_of(created)
    second = client.post(f"/sessions/{sid}/keys", json={}, headers=ADMIN).json()
    path = f"/sessions/{sid}/events/stream"
    with (
        reading(server, path, key) as revoked,
        reading(server, path, {"x-api-key": second["key"]}) as survivor,
        reading(server, path, ADMIN) as admin,
    ):
        inbound(client, sid, "seen by all")
        for stream in (revoked, survivor, admin):
            stream.wait_for(lambda got: len(got) == 1, "the message")
        # Check the revoked key's stream ends, the other key's does not.
        answer = client.delete(f"/sessions/{sid}/keys/{created['apiKey']['keyId']}", headers=ADMIN)
        answered_at = time.monotonic()
        assert answer.status_code == 204, answer.text
        ended_within(revoked, answered_at, "key-revoked")
        inbound(client, sid, "after the revocation")
        survivor.wait_for(lambda got: len(got) == 2, "the second message")
        assert len(revoked.data_events()) == 1
        # Check deleting the session ends every stream of it, the admin's too.
        answer = client.delete(f"/sessions/{sid}", headers=ADMIN)
        answered_at = time.monotonic()
        assert answer.status_code == 204, answer.text
        ended_within(survivor, answered_at, "session-deleted")
        ended_within(admin, answered_at, "session-deleted")
        # The admin's stream sends session.deleted if its feed brings it within DELETED_GRACE
        # (0.25 s) of the deletion, else it ends without it, on time: either way its end says
        # where to resume, and nothing is missed from there.
        resume_after = data(admin.events[-1])["resumeAfter"]
        if admin.data_events()[-1].event == "session.deleted":
            assert resume_after == int(admin.data_events()[-1].id)
        else:
            with reading(
                server, "/events/stream", ADMIN, after=str(resume_after), types="session.deleted"
            ) as rest:
                rest.wait_for(
                    lambda got: any(data(e)["data"]["sessionId"] == sid for e in got),
                    "the session.deleted after the end's resumeAfter",
                )


def test_with_the_projector_stopped_a_revoked_keys_stream_ends_on_every_api_process(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_STALE_AFTER": "1",
        "SESSIOND_WRITE_WAIT_TIMEOUT": "3",
        "SESSIOND_STREAM_HEARTBEAT": "5",
    }
    apis = [start("api", env), start("api", env)]
    start("worker", env)
    projector = start("projector", env)
    for view in ("session_status", "api_keys"):
        line = f"now runs projection {view}"
        eventually(partial(logged, projector, line), f"the projector runs {view}")
    a, b = apis[0].client(), apis[1].client()
    created = create_session(a, "Apart")
    sid = created["sessionId"]
    key_id, key = new_key(a, apis, sid)
    doomed = create_session(a, "Doomed")
    path = f"/sessions/{sid}/events/stream"
    doomed_path = f"/sessions/{doomed['sessionId']}/events/stream"
    with (
        reading(apis[0], path, key) as on_a,
        reading(apis[1], path, key) as on_b,
        reading(apis[1], doomed_path, key_of(doomed)) as doomed_stream,
    ):
        assert on_a.response.status_code == on_b.response.status_code == 200
        # The projector stopped: the views cannot learn of the revocation.
        projector.stop(signal.SIGTERM)
        answer = a.delete(f"/sessions/{sid}/keys/{key_id}", headers=ADMIN)
        answered_at = time.monotonic()
        assert answer.status_code == 503, answer.text
        assert "in force on every server" in answer.json()["detail"]
        ended_within(on_a, answered_at, "key-revoked")
        ended_within(on_b, answered_at, "key-revoked")
        # Check deleting a session ends its key's stream too, with the projector stopped.
        answer = b.delete(f"/sessions/{doomed['sessionId']}", headers=ADMIN)
        answered_at = time.monotonic()
        assert answer.status_code == 503, answer.text
        ended = doomed_stream.wait_end(10)
        assert ended - answered_at < LIMIT
        assert doomed_stream.events[-1].event == "end"
        # The key view still has the key (no projector), the revocations refuse it.
        assert data(doomed_stream.events[-1])["reason"] in {"session-deleted", "key-revoked"}
        assert b.get(path, headers=key).status_code == 401
    a.close()
    b.close()
