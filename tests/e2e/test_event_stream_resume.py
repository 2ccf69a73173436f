"""Resuming the live event stream across a server killed (SIGKILL) and started again: with
Last-Event-ID, the client gets every event after the last one it received, once each, in
order: events recorded while it was reading, when the server died, and while it was away."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.conftest import Sessiond, key_of
from tests.e2e.streams import (
    data,
    inbound,
    inbound_once_resumed,
    linked_session,
    message_positions,
    reading,
)


def test_a_stream_resumes_after_a_killed_server_with_nothing_missed_or_repeated(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    env = {**sessiond_env, "SESSIOND_STREAM_HEARTBEAT": "0.5"}
    server = start("serve", env)
    client = server.client()
    created = linked_session(client, "Resumed")
    sid, key = created["sessionId"], key_of(created)
    path = f"/sessions/{sid}/events/stream"
    first_seen: list[Any] = []
    with reading(server, path, key, types="message.received") as stream:
        # Check: messages keep arriving while the server is killed under the stream.
        stop = threading.Event()

        def produce() -> None:
            n = 0
            with server.client() as sender:
                while not stop.is_set():
                    try:
                        inbound(sender, sid, f"before-{n}")
                    except (httpx.HTTPError, AssertionError):
                        return  # the server is gone
                    n += 1

        producer = threading.Thread(target=produce)
        producer.start()
        stream.wait_for(lambda got: len(got) >= 15, "15 messages")
        server.stop(signal.SIGKILL)
        stop.set()
        producer.join(30)
        stream.wait_end()
        first_seen = stream.data_events()
    assert len(first_seen) >= 15
    last_id = first_seen[-1].id
    assert last_id is not None

    # Check a new server on the same database takes more messages while the client is away.
    server = start("serve", env)
    client = server.client()
    for n in range(10):
        inbound_once_resumed(client, sid, f"after-{n}")
    # The session had no message before the stream opened: the stream owes every one.
    expected = message_positions(client, sid, after=0)

    # Check the resumed stream starts right after the last event received.
    with reading(
        server, path, {**key, "Last-Event-ID": last_id}, types="message.received"
    ) as again:
        total = len(expected)
        again.wait_for(lambda got: len(first_seen) + len(got) >= total, "every message")
        resumed = again.data_events()
    ids = [int(e.id or 0) for e in first_seen + resumed]
    assert ids == expected, "events missed or repeated across the restart"
    assert len(set(ids)) == len(ids)
    texts = [data(e)["data"]["text"] for e in first_seen + resumed]
    assert texts[-10:] == [f"after-{n}" for n in range(10)]
