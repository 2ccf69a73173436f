"""The gateway in its own processes: a worker killed with SIGKILL (as a crash inside the Go
library would) takes neither the API nor its sessions down for long, and with two workers
each session has exactly one owner, taken over by the other when its owner dies."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from tests.e2e.conftest import create_session
from tests.e2e.steps import children, disconnect_reasons, gateway_child, scan, status
from tests.waiting import eventually


def test_a_killed_gateway_child_is_restarted_and_its_sessions_come_back(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        created = create_session(client, "Survivor")
        scan(client, created)
        first = eventually(lambda: gateway_child(server), what="the gateway child")

        os.kill(first, signal.SIGKILL)
        # Check the API keeps answering while the gateway is down.
        for _ in range(10):
            assert client.get("/health/live").status_code == 200
            assert status(client, created)["sessionId"] == created["sessionId"]
            time.sleep(0.02)

        # Check a new child runs, and the session is connected again, the outage on record.
        second = eventually(
            lambda: (
                [p for p, c in children(server.process.pid) if "infra.cli worker" in c] != [first]
            ),
            what="a new gateway child",
        )
        assert second
        eventually(
            lambda: (
                "gateway_lost" in disconnect_reasons(database_url, created["sessionId"])
                and status(client, created)["status"] == "connected"
            ),
            what="the session back, connected",
        )
        assert "exited with -9" in server.full_log()


def _owners(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT owner, count(*) FROM sessiond_leases GROUP BY owner").fetchall()
    return dict(rows)


def test_two_workers_share_the_sessions_and_one_takes_over_when_the_other_dies(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    api = start("api", sessiond_env)
    start("projector", sessiond_env)
    first = start("worker", sessiond_env)
    second = start("worker", sessiond_env)
    eventually(
        lambda: "is up" in first.full_log() and "is up" in second.full_log(), what="both workers up"
    )
    with api.client() as client:
        sessions = [create_session(client, f"Phone {n}") for n in range(6)]
        for created in sessions:
            scan(client, created)

        # Check each session has exactly one owner and the two workers share them.
        owners = eventually(lambda: _owners(database_url), what="leases")
        assert sorted(owners.values()) == [3, 3], owners

        first.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        killed_wall = datetime.now(UTC)

        def all_back() -> bool:
            # The dead worker's sessions still read "connected" (from before) until the
            # survivor records their loss and connects them again: wait for three sessions
            # connected since the kill, not only for the leases and the status.
            owners = _owners(database_url)
            states = [status(client, s) for s in sessions]
            connected = all(state["status"] == "connected" for state in states)
            again = sum(
                datetime.fromisoformat(state["connectedAt"].replace("Z", "+00:00")) > killed_wall
                for state in states
                if state["connectedAt"]
            )
            return connected and list(owners.values()) == [6] and again >= 3

        eventually(all_back, timeout=30, what="every session on the surviving worker")
        took = time.monotonic() - killed_at
        # Takeover is bounded: the dead worker's connection is gone at once, the survivor
        # claims on its next tick (0.2 s here), and resuming a device is quick.
        assert took < 10, took
        lost = [disconnect_reasons(database_url, s["sessionId"]) for s in sessions]
        assert sum("gateway_lost" in reasons for reasons in lost) == 3
