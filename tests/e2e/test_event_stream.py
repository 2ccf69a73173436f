"""The live event stream on a real server, read with a real SSE client (httpx-sse): events
arrive live with their log positions as ids and the webhooks' bodies, heartbeats keep an idle
stream open, a type filter keeps what it names, a session key sees its own session only, and
bad requests get problems."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.streams import data, inbound, linked_session, reading
from tests.waiting import eventually


@pytest.fixture
def server(start: Callable[..., Sessiond], sessiond_env: dict[str, str]) -> Sessiond:
    return start("serve", {**sessiond_env, "SESSIOND_STREAM_HEARTBEAT": "0.3"})


def test_a_session_stream_sends_its_events_live_with_their_positions(server: Sessiond) -> None:
    client = server.client()
    created = linked_session(client, "Live")
    sid, key = created["sessionId"], key_of(created)
    other = linked_session(client, "Other")
    with reading(server, f"/sessions/{sid}/events/stream", key) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        # Check events recorded after the stream opened arrive, in order, and nothing else.
        inbound(client, other["sessionId"], "not for this stream")
        inbound(client, sid, "first")
        inbound(client, sid, "second")
        events = stream.wait_for(lambda got: len(got) >= 2, "two messages")
        assert [e.event for e in events] == ["message.received", "message.received"]
        assert [data(e)["data"]["text"] for e in events] == ["first", "second"]
        assert all(data(e)["data"]["sessionId"] == sid for e in events)
        assert data(events[0])["type"] == "message.received"
        assert set(data(events[0])) == {"type", "timestamp", "data"}
        ids = [int(e.id) for e in events]
        assert ids == sorted(ids) and ids[0] < ids[1]
        # Check the ids are the events' positions in the log, as `GET /events` shows them.
        log = client.get("/events", params={"after": ids[0] - 1, "limit": 1}, headers=ADMIN)
        assert log.json()["items"][0]["position"] == ids[0]
        assert log.json()["items"][0]["type"] == "MessageReceived"
        # Check heartbeats come while nothing happens (httpx-sse gives comments no event;
        # the stream stays open through several heartbeat periods).
        client.post(f"/sessions/{sid}/stop", headers=key)
        stopped = stream.wait_for(lambda got: len(got) >= 3, "the stop", timeout=30)
        assert stopped[2].event == "session.stopped"
        assert stopped[2].id and int(stopped[2].id) > ids[1]


def test_the_admin_stream_sends_every_session_and_a_type_filter_keeps_what_it_names(
    server: Sessiond,
) -> None:
    client = server.client()
    with (
        reading(server, "/events/stream", ADMIN) as everything,
        reading(
            server,
            "/events/stream",
            ADMIN,
            types="session.created,message.received",
        ) as filtered,
    ):
        a = linked_session(client, "A")
        b = linked_session(client, "B")
        inbound(client, b["sessionId"], "hello")
        got = everything.wait_for(
            lambda got: any(e.event == "message.received" for e in got), "the message"
        )
        kinds = [(e.event, data(e)["data"]["sessionId"]) for e in got]
        for sid in (a["sessionId"], b["sessionId"]):
            assert ("session.created", sid) in kinds
            assert ("session.qr", sid) in kinds
            assert ("session.socket-connected", sid) in kinds
        kept = filtered.wait_for(
            lambda got: any(e.event == "message.received" for e in got), "the message"
        )
        assert {e.event for e in kept} == {"session.created", "message.received"}
        # Check both streams agree on the ids of the events both have.
        ids = {e.id: e.data for e in got}
        assert all(ids[e.id] == e.data for e in kept)


def test_bad_requests_get_problems(server: Sessiond) -> None:
    client = server.client()
    created = create_session(client, "Problems")
    other = create_session(client, "Someone else")
    sid, key = created["sessionId"], key_of(created)
    path = f"/sessions/{sid}/events/stream"

    def problem(answer: Any, status: int) -> str:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        code: str = answer.json()["type"]
        return code

    problem(client.get(path), 401)
    problem(client.get(path, headers={"x-api-key": "sdk_not-a-key"}), 401)
    problem(client.get("/events/stream"), 401)
    problem(client.get("/events/stream", headers=key), 403)
    problem(client.get(f"/sessions/{other['sessionId']}/events/stream", headers=key), 404)
    problem(client.get("/sessions/sess_0123/events/stream", headers=ADMIN), 404)
    assert "invalid-event-type" in problem(
        client.get(path, params={"types": "session.created,no.such"}, headers=key), 422
    )
    assert "invalid-event-type" in problem(
        client.get("/events/stream", params={"types": "nope"}, headers=ADMIN), 422
    )
    for bad in ("-1", "x", "1.5", "9" * 30):
        # `after` is checked against its documented pattern first, like every parameter.
        assert problem(client.get(path, params={"after": bad}, headers=key), 400).endswith(
            ("invalid-parameter", "invalid-position")
        )
        assert "invalid-position" in problem(
            client.get(path, headers={**key, "Last-Event-ID": bad}), 400
        )
    assert "invalid-position" in problem(
        client.get("/events/stream", params={"after": 10**12}, headers=ADMIN), 400
    )
    # Check a deleted session's stream is 404, and its key 401.
    assert client.delete(f"/sessions/{sid}", headers=ADMIN).status_code == 204
    problem(client.get(path, headers=key), 401)
    problem(client.get(path, headers=ADMIN), 404)


def test_a_stopping_server_ends_its_streams_with_their_position(server: Sessiond) -> None:
    client = server.client()
    created = linked_session(client, "Stopping")
    sid = created["sessionId"]
    with reading(server, f"/sessions/{sid}/events/stream", key_of(created)) as stream:
        inbound(client, sid, "last words")
        last = stream.wait_for(lambda got: len(got) == 1, "the message")[0]
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        stream.wait_end(15)
        end = stream.events[-1]
        assert end.event == "end"
        assert data(end) == {"reason": "server-stopping", "resumeAfter": int(end.id or 0)}
        assert int(end.id or 0) >= int(last.id or 0)
        server.process.wait(15)
        assert time.monotonic() - began < 10


def test_an_idle_stream_sends_heartbeats(server: Sessiond) -> None:
    client = server.client()
    created = linked_session(client, "Idle")  # linked: no QR code events to come
    path = f"/sessions/{created['sessionId']}/events/stream"
    with client.stream("GET", path, headers=key_of(created), timeout=10) as answer:
        lines = answer.iter_lines()
        assert next(lines) == ": connected"
        # Check: with SESSIOND_STREAM_HEARTBEAT=0.3, three heartbeats come within 3 s, each a
        # comment line that ends no event (no blank line follows it).
        began = time.monotonic()
        seen = [next(lines) for _ in range(3)]
        assert seen == [": heartbeat"] * 3
        assert time.monotonic() - began < 3


def test_reading_a_stream_leaves_the_callers_headers_as_they_were(server: Sessiond) -> None:
    """The stream helper must not change the headers it is given: httpx-sse writes
    ``Accept: text/event-stream`` into that dict, and the shared ADMIN headers then asked
    every later test's ``GET /qr`` for an event stream (406) — a failure seen only in a full
    run, after these tests."""
    client = server.client()
    created = create_session(client, "Headers")
    headers = {"x-api-key": ADMIN_KEY}  # a plain dict, as ADMIN was
    with reading(server, "/events/stream", headers) as stream:
        assert stream.response.status_code == 200
    assert headers == {"x-api-key": ADMIN_KEY}
    # Check what it protects: the QR code is answered (JSON) to the same headers afterwards.
    qr = f"/sessions/{created['sessionId']}/qr"
    eventually(lambda: client.get(qr, headers=headers).status_code == 200, what="the QR code")
    assert client.get(qr, headers=headers).headers["content-type"] == "application/json"


def test_the_shared_admin_headers_are_read_only() -> None:
    """A helper that writes into ADMIN fails where it writes, not in some later test."""
    with pytest.raises(TypeError):
        ADMIN["accept"] = "text/event-stream"  # type: ignore[index]
