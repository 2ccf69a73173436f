"""The dashboard's live streams on a real server: they send what changes, refuse a caller who
has not signed in, and end when the server shuts down (it does not wait for them)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx

from tests.e2e.conftest import ADMIN, Sessiond, create_session
from tests.e2e.steps import signed_in


def test_a_live_list_sends_changes_and_ends_when_the_server_stops(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    assert server.client().get("/dashboard/live/sessions").status_code == 401
    client = signed_in(server)
    with client.stream("GET", "/dashboard/live/sessions", timeout=20) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": live"
        # Check the first update, then one that follows a session created through the API.
        seen = ""
        while "event: sessions-table" not in seen:
            seen += next(lines) + "\n"
        create_session(server.client(), "Streamed")
        seen = ""
        while "Streamed" not in seen:
            seen += next(lines) + "\n"
        # Check the server stops promptly with the stream open, and the stream ends.
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            for _ in lines:
                pass
        except httpx.HTTPError:
            pass  # the connection closed under the stream: ended as well
        server.process.wait(15)
        assert time.monotonic() - began < 10
    assert server.process.returncode is not None


def test_the_api_is_unchanged_by_the_dashboard_cookie(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    client = signed_in(server)
    assert client.get("/sessions").status_code == 401  # the API wants x-api-key, always
    assert client.get("/sessions", headers=ADMIN).status_code == 200
