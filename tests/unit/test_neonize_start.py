"""How a neonize client start fails, and what it may cost: the store's errors have their own
reason, a session that cannot reach WhatsApp is not handed to Go again until the link check
passes, and starts enter Go one at a time. Clients are scripted: nothing leaves the machine.
"""

from __future__ import annotations

import socket
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from domain.policy import ReconnectPolicy
from domain.values import Reason
from infra.whatsapp.link import LinkCheck
from infra.whatsapp.loading import GoEntry
from infra.whatsapp.mapping import start_failure_reason
from infra.whatsapp.neonize import NeonizeGateway
from tests.fakes.neonize import (
    NOW,
    Recorder,
    ScriptedClient,
    make_store,
    scripted_gateway,
)

DIAL_ERROR = (
    "failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake "
    'request: Get "https://web.whatsapp.com/ws/chat": proxyconnect tcp: dial tcp '
    "127.0.0.1:9: connect: connection refused"
)
#: What 14 clients on a server with 100 connections got (the issue's report), and others.
STORE_ERRORS = (
    "failed to upgrade database: failed to check if version table exists: pq: sorry, too "
    "many clients already",
    "pq: remaining connection slots are reserved for roles with the SUPERUSER attribute",
    "failed to upgrade database: dial unix /tmp/sessiond-store-x/.s.PGSQL.6432: connect: no "
    "such file or directory",
    "failed to get device: sql: database is closed",
    "failed to upgrade database: database is locked",
)


@pytest.mark.parametrize("message", STORE_ERRORS)
def test_a_store_error_has_its_own_reason(message: str) -> None:
    assert start_failure_reason(message) == Reason.STORE_UNAVAILABLE


@pytest.mark.parametrize(
    "message",
    [
        DIAL_ERROR,
        "failed to dial whatsapp web websocket: dial tcp: lookup web.whatsapp.com: no such host",
        "noise handshake failed: EOF",
    ],
)
def test_a_link_error_is_whatsapp_unreachable(message: str) -> None:
    assert start_failure_reason(message) == Reason.WHATSAPP_UNREACHABLE


def test_a_store_failure_is_retried_with_backoff_like_a_lost_link() -> None:
    policy = ReconnectPolicy(base=2.0, factor=2.0, cap=300.0, jitter=0.0)
    for attempt, seconds in ((1, 2), (3, 8), (20, 300)):
        when = policy.next_retry(Reason.STORE_UNAVAILABLE.value, attempt, NOW)
        assert when is not None
        assert (when - NOW).total_seconds() == seconds
    assert not policy.needs_new_qr(Reason.STORE_UNAVAILABLE.value)


class Link:
    """A `LinkCheck` connector: refuses while `down`, else hands a connected socket pair end."""

    def __init__(self) -> None:
        self.down = True
        self.dials = 0

    def connect(self, address: tuple[str, int], timeout: float) -> socket.socket:
        self.dials += 1
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours


def has_calls(count: int, calls: list[Any]) -> bool:
    return len(calls) == count


def failing_gateway(
    store: Path, messages: list[str], link: Link
) -> tuple[NeonizeGateway, Recorder, list[ScriptedClient]]:
    """A gateway whose clients fail their connect with the next of `messages` (or block)."""
    return scripted_gateway(store, messages, LinkCheck(ttl=0.0, environ={}, connect=link.connect))


def test_a_store_error_from_go_is_reported_as_store_unavailable_with_its_message(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "store.db")
    gateway, events, made = failing_gateway(store, [STORE_ERRORS[0]], Link())
    sid = uuid4()
    gateway.start(sid, None)
    [call] = events.wait_for(sid, lambda calls: len(calls) == 1)
    assert (call.name, call.args[:2]) == ("disconnected", ("store_unavailable", STORE_ERRORS[0]))
    # Check the next start goes straight to Go again: the link was never in question.
    gateway.start(sid, None)
    assert made[1].connecting.wait(5)
    gateway.close()


def test_a_session_that_cannot_reach_whatsapp_goes_back_to_go_only_once_the_link_answers(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "store.db")
    link = Link()
    gateway, events, made = failing_gateway(store, [DIAL_ERROR], link)
    sid = uuid4()

    # Check the first start is Go's, and fails with the library's words.
    gateway.start(sid, None)
    events.wait_for(sid, lambda calls: len(calls) == 1)
    assert made[0].connecting.is_set() and link.dials == 0

    # Check two retries while the link is down never reach Go: the check's words instead.
    for attempt in (2, 3):
        gateway.start(sid, None)
        calls = events.wait_for(sid, partial(has_calls, attempt))
        assert calls[-1].args[:2] == (
            "whatsapp_unreachable",
            "cannot reach web.whatsapp.com:443: [Errno 111] Connection refused",
        )
    assert [client.connecting.is_set() for client in made] == [True, False, False]
    assert [client.stop_calls for client in made] == [1, 0, 0]  # Go never saw them
    assert link.dials == 2

    # Check the link coming back sends the session to Go again (this client connects).
    link.down = False
    gateway.start(sid, None)
    assert made[3].connecting.wait(5)
    assert gateway.running() == {sid}
    gateway.close()


def test_another_session_is_not_held_back_by_one_that_cannot_reach_whatsapp(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "store.db")
    gateway, events, made = failing_gateway(store, [DIAL_ERROR], Link())
    first, second = uuid4(), uuid4()
    gateway.start(first, None)
    events.wait_for(first, lambda calls: len(calls) == 1)
    gateway.start(second, None)  # its own first start: Go's to try
    assert made[1].connecting.wait(5)
    gateway.close()


def test_starts_enter_go_one_at_a_time_until_go_answers_or_the_hold_ends() -> None:
    entry = GoEntry(hold=5.0)
    first = entry.enter()
    entered: list[str] = []

    def second() -> None:
        entry.enter().set()
        entered.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.2)
    assert entered == []  # waits for the first to pass Go's map writes
    first.set()
    thread.join(5)
    assert entered == ["second"]

    short = GoEntry(hold=0.05)
    short.enter()  # never answered: the next one goes in after the hold
    started = time.monotonic()
    short.enter()
    assert time.monotonic() - started >= 0.05
