"""The silence watchdog on real `sessiond` processes with the simulator and a short period:
a session that never received anything is not judged; traffic keeps a watched one healthy;
a silent link is recorded degraded (``silent``: status, dashboard, /metrics, a signed
``session.health-changed`` webhook), checked, recycled when the check is not answered (the
disconnection recorded with its reason) and healthy again once reconnected; a check that is
answered keeps the session connected; a worker that takes the session over, and a restarted
server, keep its clock."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Sessiond, create_session
from tests.e2e.steps import admin_status as status
from tests.e2e.steps import (
    connected_session,
    history,
    holder,
    metric,
    register_hook,
    scan,
    signed_in,
    simulate,
    worker_id,
)
from tests.receiver import Receiver
from tests.waiting import eventually

FRIEND = "+14155550123"
HOOK_TYPES = ["session.health-changed", "session.socket-disconnected"]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def silenced_from(
    client: httpx.Client,
    created: dict[str, Any],
    heard_at: datetime,
    after: float,
    resumed: datetime | None = None,
) -> dict[str, Any]:
    """The session's first Silenced event, once recorded: `after` seconds (and a little)
    after `heard_at`, the last word from WhatsApp, never before; or, when the session was
    `resumed` by a restart or a takeover that took longer than that (a loaded machine), soon
    after it resumed."""
    silenced: list[dict[str, Any]] = eventually(
        lambda: of_type(history(client, created), "Silenced"),
        timeout=after + 5,
        what="the session found silent",
    )
    due = heard_at + timedelta(seconds=after)
    slack = timedelta(seconds=2.5)
    if resumed is not None:
        due, slack = max(due, resumed), timedelta(seconds=4)
    assert heard_at + timedelta(seconds=after) <= at(silenced[0]) < due + slack
    return silenced[0]


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def test_a_silent_session_is_degraded_checked_recycled_and_healthy_again(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    after, check = 3.0, 5.0
    env = {
        **sessiond_env,
        "SESSIOND_SILENCE_AFTER": str(after),
        "SESSIOND_SILENCE_CHECK_TIMEOUT": str(check),
    }
    server: Sessiond = start("serve", env)
    with server.client() as client:
        secret = register_hook(client, hook, HOOK_TYPES)
        created = connected_session(client, "Quiet")
        session_id = created["sessionId"]

        # Check a session that never received anything is not judged silent.
        dashboard = signed_in(server)
        page = dashboard.get(f"/dashboard/sessions/{session_id}")
        assert 'data-watchdog="waiting"' in page.text
        time.sleep(after + 1.5)
        shown = status(client, created)
        assert shown["health"] == "healthy" and shown["healthReason"] is None
        assert not of_type(history(client, created), "Silenced")

        # Check inbound traffic keeps a watched session healthy past the period.
        for n in range(6):
            simulate(client, created, "inbound", sender=FRIEND, text=f"hello {n}")
            assert status(client, created)["health"] == "healthy"
            time.sleep(after / 3)
        assert status(client, created)["metrics"]["messagesReceived"] == 6
        assert not of_type(history(client, created), "Silenced")
        heard = status(client, created)["lastHeardAt"]
        assert heard is not None
        page = dashboard.get(f"/dashboard/sessions/{session_id}")
        assert 'data-watchdog="watching"' in page.text
        assert "silent after 3 s without a word" in page.text

        # Check a silent link (texts lost, the check unanswered) is degraded, reason silent,
        # on the status, the dashboard and /metrics, while its check waits for an answer.
        simulate(client, created, "silent", answersChecks=False)
        simulate(client, created, "inbound", sender=FRIEND, text="lost on the way")
        silent = eventually(
            lambda: (s := status(client, created))["healthReason"] == "silent" and s,
            timeout=after + 3,
            what="the session found silent",
        )
        assert silent["status"] == "connected" and silent["health"] == "degraded"
        assert silent["lastHeardAt"] == heard
        assert silent["metrics"]["messagesReceived"] == 6
        assert datetime.fromisoformat(silent["silentSince"]) - datetime.fromisoformat(
            heard
        ) >= timedelta(seconds=after)
        assert metric(client, 'sessiond_sessions_degraded{reason="silent"}') == 1.0
        assert metric(client, 'sessiond_sessions_health{health="degraded"}') == 1.0
        page = dashboard.get(f"/dashboard/sessions/{session_id}")
        assert 'data-health-reason="silent"' in page.text
        assert "degraded (silent)" in page.text
        assert 'data-health-reason="silent"' in dashboard.get("/dashboard/").text
        degraded = hook.wait_for(
            lambda _: hook.signed(secret, "session.health-changed", session_id), timeout=20
        )
        assert degraded[0]["data"]["health"] == "degraded"
        assert degraded[0]["data"]["reason"] == "silent"
        assert datetime.fromisoformat(degraded[0]["data"]["lastHeardAt"]) == datetime.fromisoformat(
            heard
        )

        # Check the unanswered check recycles the connection, recorded with its reason, and
        # the new connection is healthy again.
        recycled = eventually(
            lambda: of_type(history(client, created), "Disconnected"),
            timeout=check + 5,
            what="the connection recycled",
        )
        assert [e["data"]["reason"] for e in recycled] == ["silent"]
        assert "no answer to the check" in recycled[0]["data"]["detail"]
        assert at(recycled[0]) - datetime.fromisoformat(silent["silentSince"]) >= timedelta(
            seconds=check - 0.5
        )
        eventually(
            lambda: (
                (s := status(client, created))["status"] == "connected" and s["health"] == "healthy"
            ),
            what="reconnected and healthy",
        )
        events = history(client, created)
        ended = of_type(events, "SilenceEnded")
        assert [e["data"]["cause"] for e in ended] == ["reconnected"]
        assert at(ended[0]) > at(recycled[0])
        healthy = hook.wait_for(
            lambda _: (
                got
                if len(got := hook.signed(secret, "session.health-changed", session_id)) >= 2
                else None
            ),
            timeout=20,
        )
        assert healthy[1]["data"] == {
            "sessionId": session_id,
            "health": "healthy",
            "reason": None,
            "cause": "reconnected",
        }
        dropped = hook.wait_for(
            lambda _: hook.signed(secret, "session.socket-disconnected", session_id)
        )
        assert dropped[0]["data"]["reason"] == "silent"
        eventually(lambda: metric(client, 'sessiond_sessions_degraded{reason="silent"}') == 0.0)

        # Check a check that is answered keeps the session connected: the new link is quiet
        # too, so it is found silent again, and WhatsApp answers this time.
        eventually(
            lambda: len(of_type(history(client, created), "SilenceEnded")) == 2,
            timeout=after + check + 5,
            what="the second silence checked",
        )
        events = history(client, created)
        causes = [e["data"]["cause"] for e in of_type(events, "SilenceEnded")]
        # (quiet on, it is found silent every period, and checked each time)
        assert causes[:2] == ["reconnected", "checked"] and set(causes[2:]) <= {"checked"}
        assert len(of_type(events, "Silenced")) in (len(causes), len(causes) + 1)
        assert len(of_type(events, "Disconnected")) == 1  # no second recycle
        checked_at = at(of_type(events, "SilenceEnded")[1])
        shown = eventually(
            lambda: (
                (s := status(client, created))["health"] == "healthy"
                and datetime.fromisoformat(s["lastHeardAt"]) >= checked_at
                and s
            ),
            what="healthy, heard at the check",
        )
        assert shown["status"] == "connected"
        dashboard.close()

        # Check the event stream carries the health changes, and its filter knows the type.
        url = f"/sessions/{session_id}/events/stream?types=session.health-changed&after=0"
        streamed = []
        with client.stream("GET", url, headers=dict(ADMIN)) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    streamed.append(json.loads(line.removeprefix("data: "))["data"])
                if len(streamed) == 4:
                    break
        assert [(d["health"], d["reason"]) for d in streamed] == [
            ("degraded", "silent"),
            ("healthy", None),
            ("degraded", "silent"),
            ("healthy", None),
        ]
        assert [d.get("cause") for d in streamed[1::2]] == ["reconnected", "checked"]


def test_a_worker_that_takes_a_session_over_keeps_its_silence_clock(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    after = 10.0
    env = {**sessiond_env, "SESSIOND_SILENCE_AFTER": str(after)}
    api = start("api", env)
    start("projector", env)
    workers = [start("worker", env) for _ in range(2)]
    eventually(lambda: all("is up" in w.log() for w in workers), what="both workers up")
    with api.client() as client:
        created = create_session(client, "Taken over")
        scan(client, created)
        simulate(client, created, "inbound", sender=FRIEND, text="the last word")
        heard_at = at(of_type(history(client, created), "MessageReceived")[0])
        owner = eventually(lambda: holder(database_url, created["sessionId"]), what="a holder")
        [dying] = [w for w in workers if worker_id(w) == owner]
        [survivor] = [w for w in workers if w is not dying]

        # The holder dies half-way through the period; the survivor takes the session over.
        time.sleep(after / 2)
        dying.stop(signal.SIGKILL)
        eventually(
            lambda: holder(database_url, created["sessionId"]) == worker_id(survivor),
            what="the survivor holds the session",
        )
        events = eventually(
            lambda: len(of_type(got := history(client, created), "Connected")) == 2 and got,
            what="resumed by the survivor",
        )
        resumed = of_type(events, "Connected")[-1]
        assert resumed["data"]["worker"] == worker_id(survivor)
        assert [e["data"]["reason"] for e in of_type(events, "Disconnected")] == ["gateway_lost"]

        # Check the silence is judged from the last word, not from the new connection.
        silenced = silenced_from(client, created, heard_at, after, resumed=at(resumed))
        assert at(silenced) < at(resumed) + timedelta(seconds=after - 1)
        assert datetime.fromisoformat(silenced["data"]["heard_at"]) == heard_at

        # The survivor's link answers the check: the silence ends, the session stays up.
        ended = eventually(
            lambda: of_type(history(client, created), "SilenceEnded"),
            what="the check answered",
        )
        assert ended[0]["data"]["cause"] == "checked"
        # The status view follows the log a moment later (under load, more than one read).
        eventually(
            lambda: (
                (s := status(client, created))["status"] == "connected" and s["health"] == "healthy"
            ),
            what="connected and healthy again",
        )
        assert len(of_type(history(client, created), "Disconnected")) == 1


def test_a_restarted_server_keeps_the_silence_clock(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    after = 30.0  # a restart of `serve` here takes about 15 s
    env = {**sessiond_env, "SESSIOND_SILENCE_AFTER": str(after)}
    server: Sessiond = start("serve", env)
    with server.client() as client:
        created = create_session(client, "Restarted")
        scan(client, created)
        simulate(client, created, "inbound", sender=FRIEND, text="the last word")
        heard_at = at(of_type(history(client, created), "MessageReceived")[0])
    server.stop()

    server = start("serve", env)
    with server.client() as client:
        events = eventually(
            lambda: len(of_type(got := history(client, created), "Connected")) == 2 and got,
            what="resumed after the restart",
        )
        resumed = of_type(events, "Connected")[-1]
        assert [e["data"]["reason"] for e in of_type(events, "Disconnected")] == [
            "service_restarted"
        ]

        # Check the silence is judged from the last word, not from the resumed connection.
        silenced = silenced_from(client, created, heard_at, after, resumed=at(resumed))
        assert at(silenced) < at(resumed) + timedelta(seconds=after - 2)
        ended = eventually(lambda: of_type(history(client, created), "SilenceEnded"))
        assert ended[0]["data"]["cause"] == "checked"
