"""The message sender keeps each session's pace and quotas: gaps between recorded sends stay
inside interval..interval+jitter, order is kept, a message over quota waits (nothing is
sent) and goes once the clock reaches its window's opening, a new sender (a restart, a
takeover) counts the sends already recorded, and "typing…" comes before each text."""

from __future__ import annotations

import itertools
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from application.ports import SentMessage
from application.sessions import SessionsApplication
from domain.policy import SendingSettings
from domain.session import Session
from domain.values import ADMIN_ACTOR
from infra.runtime.sender import MessageSender
from tests.unit.helpers import POPO_ENV, create

TO = "14155550123@s.whatsapp.net"


class Gateway:
    """Records texts and chat presences, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []  # (monotonic, what, text or state)
        self.lock = threading.Lock()

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        with self.lock:
            self.log.append((time.monotonic(), "text", text))
            return SentMessage(f"WA{len(self.log)}", datetime.now(UTC))

    def send_chat_presence(self, session_id: UUID, to: str, *, composing: bool) -> None:
        with self.lock:
            self.log.append((time.monotonic(), "presence", "composing" if composing else "paused"))

    def texts(self) -> list[str]:
        with self.lock:
            return [what for _, kind, what in self.log if kind == "text"]


class Clock:
    """The wall clock, moved on by `offset` when the test says so."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def app_with(settings: SendingSettings) -> SessionsApplication:
    return SessionsApplication(env=POPO_ENV, sending=settings)


def connected_with(app: SessionsApplication, texts: list[str]) -> tuple[str, UUID]:
    session_id, uuid = create(app)
    app.record_connected(uuid, "1555:1@s.whatsapp.net", "Phone")
    for text in texts:
        app.send_message(session_id, TO, text, None, ADMIN_ACTOR)
    return session_id, uuid


def sent_times(app: SessionsApplication, uuid: UUID) -> list[datetime]:
    return [e.timestamp for e in app.events.get(uuid) if isinstance(e, Session.MessageSent)]


class Draws(random.Random):
    """A seeded random source that keeps the jitters it drew, in order."""

    def __init__(self) -> None:
        super().__init__(7)
        self.drawn: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self.drawn.append(value)
        return value


def test_gaps_stay_inside_the_interval_and_its_jitter_and_order_is_kept() -> None:
    app = app_with(SendingSettings(interval=0.1, jitter=0.2))
    texts = [f"m{i}" for i in range(8)]
    _, uuid = connected_with(app, texts)
    gateway, draws = Gateway(), Draws()
    sender = MessageSender(app, gateway, lambda _: True, rng=draws)  # type: ignore[arg-type]
    sender.kick(uuid)
    until(lambda: app.load(uuid).next_message() is None)
    sender.close()
    assert gateway.texts() == texts
    # Check one jitter was drawn per send (for the gap after it), inside the jitter, and
    # varied; and that no message went before its gap (interval + its jitter) after the one
    # before it. A gap measured may only be longer than drawn by the timers' slack, which a
    # loaded machine stretches: the bound above is generous, the bound below exact (within a
    # millisecond of rounding).
    assert len(draws.drawn) == len(texts), draws.drawn
    assert all(0.0 <= jitter <= 0.2 for jitter in draws.drawn), draws.drawn
    assert max(draws.drawn) - min(draws.drawn) > 0.02, draws.drawn
    times = sent_times(app, uuid)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    for gap, jitter in zip(gaps, draws.drawn[:-1], strict=True):
        assert 0.1 + jitter - 1e-3 <= gap <= 0.1 + jitter + 2.0, (gaps, draws.drawn)


def test_a_message_over_quota_waits_and_goes_when_the_window_opens() -> None:
    app = app_with(SendingSettings(interval=0.0, per_hour=2))
    _, uuid = connected_with(app, ["a", "b", "c"])
    gateway, clock = Gateway(), Clock()
    sender = MessageSender(app, gateway, lambda _: True, clock=clock)  # type: ignore[arg-type]
    sender.kick(uuid)
    until(lambda: gateway.texts() == ["a", "b"])
    time.sleep(0.3)
    # Check the third waits, nothing else is sent, and the state says until when.
    assert gateway.texts() == ["a", "b"]
    state = app.sending_state(app.load(uuid), clock())
    [(held, opens)] = state.holds.items()
    assert app.load(uuid).next_message().message_id == held  # type: ignore[union-attr]
    assert timedelta(minutes=59) < opens - clock() <= timedelta(minutes=61)

    # Check a sender that starts afresh (a restart, another worker) counts the recorded sends.
    sender.close()
    again = MessageSender(app, gateway, lambda _: True, clock=clock)  # type: ignore[arg-type]
    again.kick(uuid)
    time.sleep(0.3)
    assert gateway.texts() == ["a", "b"]

    # Check it goes once the clock reaches the window's opening (a kick looks again).
    clock.offset = opens - datetime.now(UTC) + timedelta(seconds=1)
    again.kick(uuid)
    until(lambda: gateway.texts() == ["a", "b", "c"])
    again.close()


def test_raising_the_quota_lets_a_held_message_go_at_the_next_kick() -> None:
    app = app_with(SendingSettings(interval=0.0, per_hour=1))
    session_id, uuid = connected_with(app, ["a", "b"])
    gateway = Gateway()
    sender = MessageSender(app, gateway, lambda _: True)  # type: ignore[arg-type]
    sender.kick(uuid)
    until(lambda: gateway.texts() == ["a"])
    time.sleep(0.2)
    assert gateway.texts() == ["a"]
    app.set_sending(session_id, {"per_hour": 5}, ADMIN_ACTOR)
    sender.kick(uuid)  # the worker kicks on SendingSet
    until(lambda: gateway.texts() == ["a", "b"])
    sender.close()


def test_typing_comes_before_each_text_for_a_time_growing_with_its_length() -> None:
    app = app_with(SendingSettings(interval=0.0, typing=True))
    short, longer = "hi", "x" * 50  # 1.08 s and 3 s of typing
    _, uuid = connected_with(app, [short, longer])
    gateway = Gateway()
    sender = MessageSender(app, gateway, lambda _: True)  # type: ignore[arg-type]
    sender.kick(uuid)
    until(lambda: gateway.texts() == [short, longer], timeout=30)
    sender.close()
    kinds = [(kind, what) for _, kind, what in gateway.log]
    assert kinds == [
        ("presence", "composing"),
        ("presence", "paused"),
        ("text", short),
        ("presence", "composing"),
        ("presence", "paused"),
        ("text", longer),
    ]
    first = gateway.log[1][0] - gateway.log[0][0]
    second = gateway.log[4][0] - gateway.log[3][0]
    assert 1.0 <= first < 1.5 and 2.9 <= second < 3.5, (first, second)


def test_typing_is_off_by_default() -> None:
    app = app_with(SendingSettings(interval=0.0))
    _, uuid = connected_with(app, ["a"])
    gateway = Gateway()
    sender = MessageSender(app, gateway, lambda _: True)  # type: ignore[arg-type]
    sender.kick(uuid)
    until(lambda: gateway.texts() == ["a"])
    sender.close()
    assert [kind for _, kind, _ in gateway.log] == ["text"]
