"""Gateway workers in their own processes share the sessions evenly: a worker that joins
takes sessions from the others, a worker asked to stop hands its sessions over, and every
move is fenced — the old holder disconnects (and says so) before the new one connects."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from tests.e2e.conftest import ADMIN, create_session
from tests.e2e.steps import roles_apart, scan, status, worker_id
from tests.waiting import eventually


def leases(database_url: str) -> dict[str, str]:
    """Who holds each session (its uuid hex → the worker's id)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT session_id, owner FROM sessiond_leases").fetchall()
    return {row[0].hex: row[1] for row in rows}


def spread(database_url: str) -> list[int]:
    return sorted(Counter(leases(database_url).values()).values())


def link_events(database_url: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each session's Connected and Disconnected events, in order, as recorded."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id, topic, convert_from(state, 'UTF8') FROM sessiond_events "
            "WHERE topic IN ('sessiond:Session.Connected', 'sessiond:Session.Disconnected') "
            "ORDER BY originator_id, originator_version"
        ).fetchall()
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for originator, topic, state in rows:
        found.setdefault(originator.hex, []).append((topic.rsplit(".", 1)[1], json.loads(state)))
    return found


def check_never_held_twice(database_url: str) -> tuple[int, Counter[str]]:
    """Walk every session's record: a client of a worker connects only once the client of
    the previous holder is recorded as disconnected — by that holder itself when it handed
    the session over (``handed_over``). The number of changes of holder, and the reasons."""
    moves = 0
    reasons: Counter[str] = Counter()
    for session, events in link_events(database_url).items():
        holder = ""  # the worker whose client is connected, "" when none is
        last_out: dict[str, Any] | None = None
        for name, state in events:
            assert state["worker"], (session, name, state)  # every report names its worker
            if name == "Connected":
                assert holder == "", f"{session} connected by {state['worker']} while {holder}"
                if last_out is not None and last_out["reason"] == "handed_over":
                    assert last_out["worker"] != state["worker"], (session, events)
                    moves += 1
                holder = state["worker"]
            else:
                reasons[state["reason"]] += 1
                if state["reason"] == "handed_over":
                    # Only its holder hands a session over.
                    assert state["worker"] == holder, (session, events)
                holder, last_out = "", state
    return moves, reasons


def settled(
    client: httpx.Client, sessions: list[dict[str, Any]], since: datetime, moved: int
) -> list[dict[str, Any]] | None:
    """The statuses of the sessions connected since `since`, once every session reads
    connected and at least `moved` of them connected since then (None before): a moved
    session reads "connected" from before its move until the status view has its handover,
    so "all connected" alone may be read before the new holders connected them."""
    states = [status(client, created) for created in sessions]
    if not all(state["status"] == "connected" for state in states):
        return None
    again = [
        state
        for state in states
        if datetime.fromisoformat(state["connectedAt"].replace("Z", "+00:00")) > since
    ]
    return again if len(again) >= moved else None


def test_a_joining_worker_takes_an_even_share_and_a_stopping_one_hands_its_own_over(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_MOVE_BATCH": "2"}
    api, workers = roles_apart(start, env, 3)
    with api.client() as client:
        sessions = [create_session(client, f"Phone {n}") for n in range(60)]
        for created in sessions:
            scan(client, created)

        # Check the three workers hold 20 sessions each.
        eventually(lambda: spread(database_url) == [20, 20, 20], what="20/20/20")

        joined = datetime.now(UTC)  # before: it may take sessions as soon as it is up
        fourth = start("worker", env)

        # Check the fourth takes 15, five from each, and every session is connected again:
        # the 15 moved ones from their new holder (the status view has their new connection,
        # so the log has every handover and connection before it).
        again = eventually(
            lambda: (
                spread(database_url) == [15, 15, 15, 15] and settled(client, sessions, joined, 15)
            ),
            timeout=60,
            what="15 each, all connected, 15 of them anew",
        )
        assert len(again) == 15
        held = leases(database_url)
        assert Counter(held.values())[worker_id(fourth)] == 15
        moves, reasons = check_never_held_twice(database_url)
        assert moves == 15, (moves, reasons)
        assert reasons["handed_over"] == 15
        assert reasons["gateway_lost"] == 0

        # Check a worker asked to stop (SIGTERM) hands its 15 sessions over before it exits.
        leaving = workers[0]
        leaving_id = worker_id(leaving)
        left = datetime.now(UTC)
        leaving.stop(signal.SIGTERM)
        assert leaving.process.returncode == 0, leaving.log()
        handed = eventually(
            lambda: spread(database_url) == [20, 20, 20] and settled(client, sessions, left, 15),
            timeout=60,
            what="20 each on the three left, all connected, its 15 anew",
        )
        assert len(handed) == 15
        assert leaving_id not in leases(database_url).values()
        moves, reasons = check_never_held_twice(database_url)
        assert moves == 30, (moves, reasons)
        assert reasons["handed_over"] == 30
        assert reasons["gateway_lost"] == 0
        assert reasons["service_restarted"] == 0


def test_a_call_whose_worker_dies_mid_way_is_answered_by_the_next_holder(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_GATEWAY_CALL_TIMEOUT": "30"}
    api = start("api", env)
    start("projector", env)
    # The first worker's phone is slow: a scan it runs is still under way when it dies.
    slow = start("worker", {**env, "SESSIOND_SIMULATOR_PHONE_DELAY": "120"})
    quick = start("worker", env)
    eventually(
        lambda: "is up" in slow.full_log() and "is up" in quick.full_log(), what="workers up"
    )
    with httpx.Client(base_url=api.url, timeout=60) as client:
        sessions = [create_session(client, f"Phone {n}") for n in range(2)]
        eventually(lambda: spread(database_url) == [1, 1], what="one session each")
        slow_id = worker_id(slow)
        (created,) = [s for s in sessions if leases(database_url)[s["sessionId"][5:]] == slow_id]
        eventually(lambda: status(client, created)["qrExpiresAt"], what="a QR code shown")

        answers: list[httpx.Response] = []
        url = f"/simulator/sessions/{created['sessionId']}/scan"
        call = threading.Thread(target=lambda: answers.append(client.post(url, headers=ADMIN)))
        call.start()

        def claimed_by_slow() -> bool:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT claimed_by FROM sessiond_gateway_requests WHERE action = 'scan'"
                ).fetchone()
            return row is not None and row[0] == slow_id

        eventually(claimed_by_slow, what="the scan under way on the slow worker")
        slow.stop(signal.SIGKILL)
        call.join(60)

        # Check the call is answered by the session's next holder, not with a 503.
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert leases(database_url)[created["sessionId"][5:]] == worker_id(quick)
        assert status(client, created)["status"] == "connected"
