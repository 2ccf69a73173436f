"""A session's proxy goes with the session when another worker takes it over (simulator
gateway, the roles in processes of their own). The proxy is a port on 127.0.0.1 that counts
the connections it gets: the simulator opens one to a session's proxy at each start."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import create_session
from tests.e2e.steps import holder, status, worker_id
from tests.waiting import eventually


class Listener:
    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.server.close()


def test_the_worker_that_takes_a_session_over_dials_through_its_proxy(
    start: Any, sessiond_env: dict[str, str], database_url: str, listener: Listener
) -> None:
    api = start("api", sessiond_env)
    start("projector", sessiond_env)
    workers = [start("worker", sessiond_env) for _ in range(2)]
    eventually(lambda: all("is up" in w.full_log() for w in workers), what="both workers up")
    with api.client() as client:
        proxy = f"socks5://hal:takeover-Secret@127.0.0.1:{listener.port}"
        created = create_session(client, "Moving", proxy={"url": proxy})
        eventually(lambda: listener.connections >= 1, what="the first start dials the proxy")
        owner = eventually(lambda: holder(database_url, created["sessionId"]), what="a holder")
        [dying] = [w for w in workers if worker_id(w) == owner]
        [survivor] = [w for w in workers if w is not dying]

        # Check the survivor's start of the session goes through the same proxy.
        before = listener.connections
        dying.stop(signal.SIGKILL)
        eventually(
            lambda: holder(database_url, created["sessionId"]) == worker_id(survivor),
            what="the survivor holds the session",
        )
        eventually(lambda: listener.connections > before, what="the survivor dials the proxy")
        eventually(
            lambda: status(client, created)["qrExpiresAt"] is not None, what="QR codes again"
        )
    assert "takeover-Secret" not in survivor.full_log() + api.full_log()
