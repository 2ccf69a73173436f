"""Open streams cost no PostgreSQL connection: an API process with 50 streams open and
events flowing to all of them holds the connections it holds idle (one listener, its pool
within its budget), sampled every 20 ms."""

from __future__ import annotations

import contextlib
from typing import Any

from tests.e2e.census import BUDGETS, Census, by_process, settled, wait_for
from tests.e2e.conftest import ADMIN, key_of
from tests.e2e.streams import Reader, inbound, linked_session

STREAMS = 50
SESSIONS = 5
PER_SESSION = 8  # below the per-session cap of streams (10)


def test_fifty_open_streams_add_no_connection_to_an_api_process(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_STREAM_HEARTBEAT": "1"}
    api = start("api", env)
    start("projector", env)
    start("worker", env)
    wait_for(settled(database_url), "every projection elected and the worker up")
    client = api.client()
    sessions = [linked_session(client, f"Watched {n}") for n in range(SESSIONS)]
    census = Census(database_url)
    idle = by_process(census.now())["sessiond-api"]
    assert idle <= BUDGETS["api"]
    with contextlib.ExitStack() as stack, census.watching():
        readers: list[tuple[Reader, str | None]] = []
        for session in sessions:
            for _ in range(PER_SESSION):
                path = f"/sessions/{session['sessionId']}/events/stream"
                reader = Reader(api.url + path, key_of(session))
                stack.callback(reader.close)
                readers.append((reader, session["sessionId"]))
        while len(readers) < STREAMS:
            reader = Reader(api.url + "/events/stream", ADMIN)
            stack.callback(reader.close)
            readers.append((reader, None))
        assert all(reader.response.status_code == 200 for reader, _ in readers)
        # Check every stream gets its events while the API process keeps its connections.
        for n, session in enumerate(sessions):
            inbound(client, session["sessionId"], f"to every stream {n}")
        for reader, session_id in readers:
            wanted = 1 if session_id is not None else SESSIONS

            def enough(got: list[Any], wanted: int = wanted) -> bool:
                return len(got) >= wanted

            reader.wait_for(enough, "its messages")
            if session_id is not None:
                assert reader.events[0].event == "message.received"
        now = census.now()
        with_streams = by_process(now)["sessiond-api"]
    # Check: one listener still, and the pool within its budget (it may open a connection it
    # had not needed yet while idle, for the views' refresh or a command, never one a stream
    # holds: 50 streams holding one each could not fit in 4).
    assert now["sessiond-api:listener"] == 1, now
    assert census.samples > 10
    assert census.peak["sessiond-api"] <= BUDGETS["api"], census.peak
    assert with_streams <= BUDGETS["api"], (idle, with_streams)
    print(f"api with {STREAMS} streams: idle {idle}, with them {with_streams}, {census.peak}")
