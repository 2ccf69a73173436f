"""The message sender in memory: order and pace, a recording that fails (no second send, the
drain goes on), transient gateway failures (retried with a pause whatever the pace, then
failed), refused recipients, and a kick while a drain is finishing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from application.errors import GatewayError, NotConnected, RecipientRejected
from application.ports import SentMessage
from application.sessions import SessionsApplication
from domain.policy import SendPolicy
from domain.session import Session
from domain.values import ADMIN_ACTOR
from infra.runtime.sender import MessageSender
from tests.unit.helpers import create, popo_app

TO = "14155550123@s.whatsapp.net"


class FakeGateway:
    """Records what is sent; `failures` are raised first, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failures: list[Exception] = []
        self.lock = threading.Lock()

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.sent.append(text)
            return SentMessage(f"WA{len(self.sent)}", datetime.now(UTC))


class FlakyApp(SessionsApplication):
    """Fails to record the first `record_sent` (after WhatsApp took the message)."""

    fail_next_record = False

    def record_sent(self, session_id: UUID, message_id: str, whatsapp_id: str) -> int | None:
        if self.fail_next_record:
            self.fail_next_record = False
            raise RuntimeError("the database blinked")
        return super().record_sent(session_id, message_id, whatsapp_id)


QUICK = SendPolicy(first_pause=0.01, longest_pause=0.01)


def build(app: SessionsApplication, gateway: FakeGateway, interval: float = 0.0) -> MessageSender:
    return MessageSender(app, gateway, lambda _: True, interval=interval, policy=QUICK)  # type: ignore[arg-type]


def until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def connected_with(app: SessionsApplication, texts: list[str]) -> UUID:
    session_id, uuid = create(app)
    app.record_connected(uuid, "1555:1@s.whatsapp.net", "Phone")
    for text in texts:
        app.send_message(session_id, TO, text, None, ADMIN_ACTOR)
    return uuid


def drained(
    texts: list[str],
    failures: list[Exception] | None = None,
    app: SessionsApplication | None = None,
) -> tuple[SessionsApplication, FakeGateway, UUID]:
    """`texts` queued on a connected session and drained by a sender whose gateway raises
    `failures` first: once the queue is empty."""
    app, gateway = app or popo_app(), FakeGateway()
    uuid = connected_with(app, texts)
    gateway.failures = list(failures or [])
    sender = build(app, gateway)
    sender.kick(uuid)
    until(lambda: app.load(uuid).next_message() is None)
    sender.close()
    return app, gateway, uuid


def test_the_queue_goes_out_in_order_at_the_pace() -> None:
    app, gateway = popo_app(), FakeGateway()
    uuid = connected_with(app, ["a", "b", "c"])
    sender = build(app, gateway, interval=0.1)
    started = time.monotonic()
    sender.kick(uuid)
    until(lambda: app.load(uuid).next_message() is None)
    assert gateway.sent == ["a", "b", "c"]
    assert time.monotonic() - started >= 0.2  # two pauses between three messages
    sender.close()


def test_a_recording_that_fails_does_not_send_again_and_the_drain_goes_on() -> None:
    flaky = popo_app(FlakyApp)
    flaky.fail_next_record = True  # type: ignore[attr-defined]
    app, gateway, uuid = drained(["a", "b"], app=flaky)
    assert gateway.sent == ["a", "b"]
    sent = [e for e in app.events.get(uuid) if isinstance(e, Session.MessageSent)]
    assert [e.whatsapp_id for e in sent] == ["WA1", "WA2"]


def test_transient_failures_are_retried_then_the_message_fails_and_the_next_goes() -> None:
    failures: list[Exception] = [GatewayError("timed out")] * QUICK.attempts
    app, gateway, uuid = drained(["first", "second"], failures)
    assert gateway.sent == ["second"]
    failed = [e for e in app.events.get(uuid) if isinstance(e, Session.MessageFailed)]
    assert [(e.reason, e.detail) for e in failed] == [("send_failed", "timed out")]


def test_a_blip_is_retried_and_the_message_still_goes() -> None:
    _, gateway, _ = drained(["once"], [GatewayError("timed out")])
    assert gateway.sent == ["once"]


def test_a_refused_recipient_fails_at_once() -> None:
    _, gateway, _ = drained(["nobody", "somebody"], [RecipientRejected("not on WhatsApp")])
    assert gateway.sent == ["somebody"]


def test_not_connected_stops_the_drain_and_keeps_the_queue() -> None:
    app, gateway = popo_app(), FakeGateway()
    uuid = connected_with(app, ["later"])
    gateway.failures = [NotConnected("down")]
    sender = build(app, gateway)
    sender.kick(uuid)
    until(lambda: uuid not in sender.draining())
    assert app.load(uuid).next_message() is not None and gateway.sent == []
    sender.kick(uuid)  # the next connection kicks again
    until(lambda: app.load(uuid).next_message() is None)
    assert gateway.sent == ["later"]
    sender.close()


def test_a_kick_while_draining_is_not_lost() -> None:
    app, gateway = popo_app(), FakeGateway()
    uuid = connected_with(app, ["a"])
    sender = build(app, gateway, interval=0.05)
    sender.kick(uuid)
    session_id = app.load(uuid)
    for text in ("b", "c"):
        app.send_message(f"sess_{session_id.id.hex}", TO, text, None, ADMIN_ACTOR)
        sender.kick(uuid)
    until(lambda: app.load(uuid).next_message() is None and uuid not in sender.draining())
    assert gateway.sent == ["a", "b", "c"]
    sender.close()
