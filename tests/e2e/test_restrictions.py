"""Restrictions on a real `sessiond serve` with the simulator: a ban and a logout pause the
outbound queue (nothing sent, nothing lost, each message saying why it waits), across an
operator's reconnect during the ban and a restart of the server; the queue resumes in order
by itself when the ban ends, or once the session is linked again; the status, /metrics, the
dashboard and signed webhooks say so."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.steps import (
    PHONE,
    connected_session,
    history,
    holder,
    message,
    metric,
    register_hook,
    roles_apart,
    scan,
    send_text,
    signed_in,
    simulate,
    worker_id,
)
from tests.e2e.steps import admin_status as status
from tests.receiver import Receiver
from tests.waiting import eventually

HOOK_TYPES = ["session.restricted", "session.restriction-lifted", "message.sent"]


def messages(client: httpx.Client, created: dict[str, Any], ids: list[str]) -> list[Any]:
    return [message(client, created, message_id) for message_id in ids]


def restricted_metric(client: httpx.Client, kind: str) -> float:
    return metric(client, f'sessiond_sessions_restricted{{kind="{kind}"}}')


def sent_types(client: httpx.Client, created: dict[str, Any]) -> list[str]:
    return [e["type"] for e in history(client, created)]


def assert_held(found: list[Any], kind: str, until: str | None) -> None:
    """Each message is queued, says the restriction that holds it, and was never sent."""
    for held in found:
        assert held["status"] == "queued", held
        assert held["reason"] == kind, held
        assert held["restriction"]["kind"] == kind
        assert held["restriction"]["until"] == until
        assert held["sentAt"] is None and held["whatsappId"] is None


def all_sent(client: httpx.Client, created: dict[str, Any], ids: list[str]) -> list[Any] | None:
    found = messages(client, created, ids)
    return found if all(m["status"] == "sent" for m in found) else None


def sent_in_order(found: list[Any]) -> None:
    assert all(m["status"] == "sent" and m["restriction"] is None for m in found), found
    times = [datetime.fromisoformat(m["sentAt"]) for m in found]
    assert times == sorted(times)


def drained_at_the_end(
    client: httpx.Client, created: dict[str, Any], ids: list[str], ban_ends: float
) -> None:
    """The queued messages go out by themselves once the ban has ended (not before), in
    order, none lost."""
    found = eventually(
        lambda: all_sent(client, created, ids),
        timeout=max(0.0, ban_ends - time.monotonic()) + 30,
        what="the queue drained after the ban",
    )
    assert time.monotonic() >= ban_ends - 1
    sent_in_order(found)


def lifted_and_emptied(client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
    """The status once it shows the session connected, unrestricted, its queue empty, and
    /metrics counts it restricted no more. The status view (the API's copy) may lag the
    messages view the drain was seen in: waited for, not read once."""
    shown = eventually(
        lambda: (
            found
            if (found := status(client, created))["status"] == "connected"
            and found["restriction"] is None
            and found["metrics"]["queueDepth"] == 0
            else None
        ),
        what="the status connected, unrestricted, its queue empty",
    )
    eventually(
        lambda: restricted_metric(client, "temporarily_banned") == 0.0,
        what="no session counted banned",
    )
    return shown


def test_a_ban_pauses_the_queue_across_a_restart_and_it_resumes_in_order_when_it_ends(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    env = {**sessiond_env, "SESSIOND_SEND_INTERVAL": "0.05"}
    server: Sessiond = start("serve", env)
    ban_seconds = 40.0  # covers a restart of `serve` on a loaded machine
    with server.client() as client:
        secret = register_hook(client, hook, HOOK_TYPES)
        created = connected_session(client, "Banned")
        session_id = created["sessionId"]
        before = send_text(client, created, "before the ban")["messageId"]
        eventually(lambda: messages(client, created, [before])[0]["status"] == "sent")

        # Check the ban restricts the session and pauses its queue.
        banned_at = time.monotonic()
        simulate(client, created, "ban", seconds=ban_seconds)
        shown = status(client, created)
        restriction = shown["restriction"]
        assert restriction["kind"] == "temporarily_banned"
        assert restriction["detail"] == "simulated ban"
        until = restriction["until"]
        assert until is not None
        assert shown["reason"] == "temporarily_banned"
        ids = [send_text(client, created, f"held {n}")["messageId"] for n in range(4)]
        queued = client.post(
            f"/sessions/{session_id}/messages",
            json={"to": PHONE, "text": "held 4"},
            headers=key_of(created),
        ).json()
        assert queued["status"] == "queued"
        assert queued["restriction"]["kind"] == "temporarily_banned"
        ids.append(queued["messageId"])
        assert_held(messages(client, created, ids), "temporarily_banned", until)
        eventually(lambda: restricted_metric(client, "temporarily_banned") == 1.0)
        restricted = hook.wait_for(
            lambda _: hook.signed(secret, "session.restricted", session_id), timeout=20
        )
        assert restricted[0]["data"]["kind"] == "temporarily_banned"
        assert datetime.fromisoformat(restricted[0]["data"]["until"]) == datetime.fromisoformat(
            until
        )

        # Check an operator's reconnect during the ban changes nothing: the same ban again.
        reconnect = client.post(f"/sessions/{session_id}/reconnect", headers=ADMIN)
        assert reconnect.status_code == 200, reconnect.text
        eventually(
            lambda: status(client, created)["status"] == "disconnected",
            what="the ban refused the reconnect",
        )
        assert status(client, created)["restriction"]["until"] == until
    server.stop()

    # Check a restart of the server keeps the queue paused, the messages kept.
    server = start("serve", env)
    with server.client() as client:
        assert status(client, created)["restriction"]["kind"] == "temporarily_banned"
        time.sleep(2)  # the restarted worker has taken the session over meanwhile
        assert_held(messages(client, created, ids), "temporarily_banned", until)
        assert status(client, created)["metrics"]["queueDepth"] == 5
        assert time.monotonic() - banned_at < ban_seconds, "the test ran too slowly to prove it"

        # Check the queue resumes by itself once the ban ends, in order, nothing lost.
        drained_at_the_end(client, created, ids, banned_at + ban_seconds)
        lifted_and_emptied(client, created)
        types = sent_types(client, created)
        assert types.count("Restricted") == 1  # the reconnect during the ban added none
        assert types.count("RestrictionLifted") == 1
        assert types.count("MessageSent") == 6
        assert types.count("MessageFailed") == 0
        lifted = hook.wait_for(
            lambda _: hook.signed(secret, "session.restriction-lifted", session_id),
            timeout=30,
        )
        assert lifted[0]["data"] == {
            "sessionId": session_id,
            "kind": "temporarily_banned",
            "cause": "ban_ended",
        }
        delivered = hook.wait_for(
            lambda _: (
                got if len(got := hook.signed(secret, "message.sent", session_id)) == 6 else None
            ),
            timeout=30,
        )
        assert {b["data"]["messageId"] for b in delivered} == {before, *ids}


def test_a_logout_pauses_the_queue_until_the_session_is_linked_again(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    env = {**sessiond_env, "SESSIOND_SEND_INTERVAL": "0.05"}
    server: Sessiond = start("serve", env)
    with server.client() as client:
        secret = register_hook(client, hook, HOOK_TYPES)
        created = connected_session(client, "Logged out")
        session_id = created["sessionId"]
        simulate(client, created, "logout")
        restriction = status(client, created)["restriction"]
        assert restriction["kind"] == "logged_out"
        assert restriction["until"] is None
        ids = [send_text(client, created, f"held {n}")["messageId"] for n in range(3)]
        assert_held(messages(client, created, ids), "logged_out", None)
        hook.wait_for(lambda _: hook.signed(secret, "session.restricted", session_id))
    server.stop()

    server = start("serve", env)
    with server.client() as client:
        time.sleep(2)
        assert_held(messages(client, created, ids), "logged_out", None)
        assert status(client, created)["restriction"]["kind"] == "logged_out"

        # Check the reconnect alone lifts nothing: the phone must scan a new QR code.
        reconnect = client.post(f"/sessions/{session_id}/reconnect", headers=key_of(created))
        assert reconnect.status_code == 200, reconnect.text
        eventually(
            lambda: client.get(f"/sessions/{session_id}/qr", headers=ADMIN).status_code == 200,
            what="a new QR code",
        )
        assert status(client, created)["restriction"]["kind"] == "logged_out"
        assert_held(messages(client, created, ids), "logged_out", None)
        dashboard = signed_in(server)
        page = dashboard.get(f"/dashboard/sessions/{session_id}")
        assert 'data-restriction="logged_out"' in page.text
        assert "scan the new QR code" in page.text

        scan(client, created)
        found = eventually(
            lambda: all_sent(client, created, ids),
            what="the queue drained after the new link",
        )
        sent_in_order(found)
        assert status(client, created)["restriction"] is None
        lifted = hook.wait_for(
            lambda _: hook.signed(secret, "session.restriction-lifted", session_id)
        )
        assert lifted[0]["data"]["cause"] == "connected"
        page = dashboard.get(f"/dashboard/sessions/{session_id}")
        assert "data-restriction=" not in page.text
        dashboard.close()


def test_the_simulator_produces_each_restriction_counted_by_kind_and_shown_with_advice(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server: Sessiond = start("serve", sessiond_env)
    actions = {
        "temporarily_banned": ("ban", {"seconds": 600}),
        "logged_out": ("logout", {}),
        "stream_replaced": ("replace", {}),
        "client_outdated": ("outdated", {}),
    }
    advice = {
        "temporarily_banned": "resumes by itself",
        "logged_out": "scan the new QR code",
        "stream_replaced": "Close it, then reconnect",
        "client_outdated": "Upgrade sessiond",
    }
    dashboard = signed_in(server)
    with server.client() as client:
        made = {}
        for kind, (action, body) in actions.items():
            created = create_session(client, kind)
            scan(client, created)
            simulate(client, created, action, **body)
            made[kind] = created
            assert status(client, created)["restriction"]["kind"] == kind
            session = client.get(f"/sessions/{created['sessionId']}", headers=ADMIN).json()
            assert session["restriction"]["kind"] == kind
            page = dashboard.get(f"/dashboard/sessions/{created['sessionId']}")
            assert f'data-restriction="{kind}"' in page.text
            assert advice[kind] in page.text
        for kind in actions:
            assert restricted_metric(client, kind) == 1.0
        listing = dashboard.get("/dashboard/")
        assert listing.text.count("restricted: sending paused") == 4

        # Check a reconnect of a replaced session resumes its device and lifts it.
        replaced = made["stream_replaced"]
        answer = client.post(f"/sessions/{replaced['sessionId']}/reconnect", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        eventually(lambda: status(client, replaced)["status"] == "connected")
        assert status(client, replaced)["restriction"] is None
        eventually(lambda: restricted_metric(client, "stream_replaced") == 0.0)
        assert restricted_metric(client, "client_outdated") == 1.0

        # Check the new types are accepted by the event stream's filter and webhooks.
        url = "/events/stream?types=session.restricted,session.restriction-lifted&after=0"
        with client.stream("GET", url, headers=dict(ADMIN)) as stream:
            assert stream.status_code == 200
            kinds = set()
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    kinds.add(json.loads(line.removeprefix("data: "))["data"]["kind"])
                if len(kinds) == 4:
                    break
        assert kinds == set(actions)
    dashboard.close()


def test_a_worker_that_takes_a_banned_session_over_keeps_its_queue_paused_until_the_end(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_SEND_INTERVAL": "0.05"}
    api, workers = roles_apart(start, env, 2)
    ban_seconds = 30.0  # covers a lease-expiry takeover on a loaded machine
    with api.client() as client:
        created = create_session(client, "Taken over")
        scan(client, created)
        owner = eventually(lambda: holder(database_url, created["sessionId"]), what="a holder")
        [dying] = [w for w in workers if worker_id(w) == owner]
        [survivor] = [w for w in workers if w is not dying]
        banned_at = time.monotonic()
        simulate(client, created, "ban", seconds=ban_seconds)
        until = status(client, created)["restriction"]["until"]
        ids = [send_text(client, created, f"held {n}")["messageId"] for n in range(3)]

        # Check the survivor takes the session over and still holds the queue.
        dying.stop(signal.SIGKILL)
        eventually(
            lambda: holder(database_url, created["sessionId"]) == worker_id(survivor),
            what="the survivor holds the session",
        )
        assert_held(messages(client, created, ids), "temporarily_banned", until)
        assert time.monotonic() - banned_at < ban_seconds, "the test ran too slowly to prove it"

        # Check the survivor resumes the queue by itself at the ban's end, in order.
        drained_at_the_end(client, created, ids, banned_at + ban_seconds)
        lifted_and_emptied(client, created)
