"""The `WhatsAppGateway` contract, run against the simulator and the neonize adapter.

Each test drives a gateway and a "phone" (what a real phone and network do to a session) and
asserts the `GatewayEvents` callbacks the application would see. For the simulator the phone
is its `PhoneSimulator` hooks; for neonize it is a scripted neonize client (real `NewClient`
objects, events fed through neonize's own dispatch on the client's thread, as Go does; no
network). Where the adapters legitimately differ (the JID a scan links, the push name, the
detail texts) the tests assert shapes, not strings.

Each test's QR timings fit what it proves (`Timings`): the rotation and the end of the codes
on a short clock (0.3 s, then 0.05 s, 3 codes); "nothing more after a stop or a scan" on codes
that keep rotating every 0.3 s, so that a next code is due soon after the step however late
the step comes; every other test on codes that last a minute, so that its steps (a scan, a
pairing code, a stop) never race a code's end. Waits return as soon as the awaited callback
arrives; only "nothing more happens" needs a fixed pause: until the next QR code would have
been due.
"""

from __future__ import annotations

import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from application.errors import GatewayError, NotConnected, NotPairing, RecipientRejected
from application.ports import InboundMessage, PhoneSimulator, WhatsAppGateway
from infra.whatsapp.link import LinkCheck
from infra.whatsapp.neonize import NeonizeGateway
from infra.whatsapp.simulator import SimulatorGateway
from tests.fakes.neonize import (
    NZ,
    PB,
    Call,
    Recorder,
    ScriptedClient,
    feed,
    make_store,
    names,
    receipt,
    text_message,
)


@dataclass(frozen=True)
class Timings:
    """How long the first QR code is shown, each next one, and how many codes in all."""

    first: float
    next: float
    codes: int


# The rotation and the end of the codes, on the clock.
SHORT = Timings(first=0.3, next=0.05, codes=3)
# Codes that keep rotating for minutes: a stop or a scan lands while they rotate however late
# it comes, and the next code is due within 0.3 s of the last one shown.
ROTATING = Timings(first=0.3, next=0.3, codes=1000)
# A code lasts a minute: a test's steps are done long before a second code would come.
STILL = Timings(first=60.0, next=60.0, codes=3)
KNOWN_JID = "15551234567:12@s.whatsapp.net"
UNKNOWN_JID = "15559999999:3@s.whatsapp.net"
DIAL_ERROR = "failed to dial whatsapp web websocket: connect: network is unreachable"
FRIEND = "15557654321@s.whatsapp.net"
NOT_ON_WHATSAPP = "0123456789@s.whatsapp.net"  # both gateways: numbers starting with 0


class Phone(ABC):
    """What a phone and a network do to a session."""

    @abstractmethod
    def scan(self, session_id: UUID) -> None: ...

    @abstractmethod
    def drop(self, session_id: UUID) -> None: ...

    @abstractmethod
    def remote_logout(self, session_id: UUID) -> None: ...

    @abstractmethod
    def replace(self, session_id: UUID) -> None: ...

    @abstractmethod
    def ban(self, session_id: UUID, seconds: float) -> None: ...

    @abstractmethod
    def keepalive(self, session_id: UUID, healthy: bool) -> None: ...

    @abstractmethod
    def set_reachable(self, reachable: bool) -> None: ...

    @abstractmethod
    def inbound(self, session_id: UUID, sender: str, text: str) -> None:
        """`sender` writes `text` to the session's account."""

    @abstractmethod
    def ack(self, session_id: UUID, whatsapp_id: str, status: str) -> None:
        """The recipient's phone acknowledges a message the session sent."""

    @abstractmethod
    def stop_answering(self, session_id: UUID) -> None:
        """WhatsApp stops answering the session's queries (its link stays up)."""


class SimulatedPhone(Phone):
    def __init__(self, simulator: PhoneSimulator) -> None:
        self.simulator = simulator

    def scan(self, session_id: UUID) -> None:
        self.simulator.scan(session_id)

    def drop(self, session_id: UUID) -> None:
        self.simulator.drop(session_id)

    def remote_logout(self, session_id: UUID) -> None:
        self.simulator.remote_logout(session_id)

    def replace(self, session_id: UUID) -> None:
        self.simulator.replace(session_id)

    def ban(self, session_id: UUID, seconds: float) -> None:
        self.simulator.ban(session_id, seconds)

    def keepalive(self, session_id: UUID, healthy: bool) -> None:
        self.simulator.keepalive(session_id, healthy)

    def set_reachable(self, reachable: bool) -> None:
        self.simulator.set_reachable(reachable)

    def inbound(self, session_id: UUID, sender: str, text: str) -> None:
        self.simulator.inbound(session_id, sender, text)

    def ack(self, session_id: UUID, whatsapp_id: str, status: str) -> None:
        self.simulator.ack(session_id, whatsapp_id, status)

    def stop_answering(self, session_id: UUID) -> None:
        self.simulator.silence(session_id, answers_checks=False)


class ScriptedPhone(Phone):
    """Plays whatsmeow's part for the neonize adapter: events go to the session's scripted
    client, which feeds them through neonize on its own thread."""

    def __init__(self, gateway: NeonizeGateway, timings: Timings) -> None:
        self.gateway = gateway
        self.timings = timings
        self.reachable = True

    def client(self, session_id: UUID) -> ScriptedClient:
        client = self.gateway.client_of(session_id)
        assert isinstance(client, ScriptedClient)
        return client

    def send(self, session_id: UUID, event: Any) -> None:
        self.client(session_id).do(lambda c: feed(c, event))

    def scan(self, session_id: UUID) -> None:
        self.client(session_id).do(lambda c: c.scan())

    def drop(self, session_id: UUID) -> None:
        self.send(session_id, PB.Disconnected(status=True))

    def remote_logout(self, session_id: UUID) -> None:
        self.send(session_id, PB.LoggedOut(OnConnect=False, Reason=PB.LOGGED_OUT))

    def replace(self, session_id: UUID) -> None:
        self.send(session_id, PB.StreamReplaced())

    def ban(self, session_id: UUID, seconds: float) -> None:
        code = PB.TemporaryBan.BLOCKED_BY_USERS
        self.send(session_id, PB.TemporaryBan(Code=code, Expire=int(seconds)))

    def keepalive(self, session_id: UUID, healthy: bool) -> None:
        event = PB.KeepAliveRestored() if healthy else PB.KeepAliveTimeout(ErrorCount=1)
        self.send(session_id, event)

    def set_reachable(self, reachable: bool) -> None:
        self.reachable = reachable
        if not reachable:
            for session_id in self.gateway.running():
                self.drop(session_id)

    def inbound(self, session_id: UUID, sender: str, text: str) -> None:
        message_id = "3A" + secrets.token_hex(9).upper()
        now_ms = int(time.time() * 1000)
        event = text_message(text, sender=sender, message_id=message_id, timestamp=now_ms)
        self.send(session_id, event)

    def ack(self, session_id: UUID, whatsapp_id: str, status: str) -> None:
        # sent by the recipient of the message, whom the client remembers
        recipient = self.client(session_id).recipients[whatsapp_id]
        kind = {"delivered": PB.Receipt.DELIVERED, "read": PB.Receipt.READ}[status]
        event = receipt(whatsapp_id, kind=kind, sender=recipient, timestamp=int(time.time()))
        self.send(session_id, event)

    def stop_answering(self, session_id: UUID) -> None:
        self.client(session_id).check_delay = 60.0  # whatsmeow waits 75 s for an answer

    def dial(self, address: tuple[str, int], timeout: float) -> socket.socket:
        """WhatsApp's first hop, for the gateway's link check: refused while unreachable."""
        if not self.reachable:
            raise OSError(101, "Network is unreachable")
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours

    def make_client(self, store_dsn: str, **kwargs: Any) -> ScriptedClient:
        fail = None if self.reachable else NZ.neonize_error(DIAL_ERROR)
        t = self.timings
        return ScriptedClient(
            store_dsn, codes=t.codes, first=t.first, next_=t.next, fail=fail, **kwargs
        )


@dataclass
class Rig:
    gateway: WhatsAppGateway
    phone: Phone
    events: Recorder
    timings: Timings

    def wait(self, session_id: UUID, count: int) -> list[Call]:
        """The session's calls once there are `count` of them."""
        return self.events.wait_for(session_id, lambda calls: len(calls) >= count)

    def disconnected(self, session_id: UUID, reason: str) -> Call:
        """The session's third call, once it has come: a disconnection for `reason`."""
        call = self.wait(session_id, 3)[2]
        assert (call.name, call.args[0]) == ("disconnected", reason)
        return call

    def wait_name(self, session_id: UUID, name: str) -> list[Call]:
        return self.events.wait_for(session_id, lambda calls: name in names(calls))

    def quiet(self, session_id: UUID, pause: float) -> list[Call]:
        """The session's calls after `pause` seconds in which anything pending would arrive."""
        time.sleep(pause)
        if isinstance(self.gateway, NeonizeGateway):
            assert self.gateway.wait_idle()
        return self.events.of(session_id)

    def connected(self) -> tuple[UUID, str]:
        """A session paired by a scan; its device JID (calls: the code shown, connected)."""
        sid = uuid4()
        self.gateway.start(sid, None)
        self.wait_name(sid, "qr_issued")
        self.phone.scan(sid)
        call = self.wait_name(sid, "connected")[-1]
        return sid, call.args[0]


@contextmanager
def built(kind: str, tmp_path: Path, timings: Timings) -> Iterator[Rig]:
    """A rig of the `kind` gateway whose QR codes follow `timings`."""
    events = Recorder()
    gateway: WhatsAppGateway
    phone: Phone
    if kind == "simulator":
        simulator = SimulatorGateway(
            first_timeout=timings.first,
            next_timeout=timings.next,
            max_codes=timings.codes,
            devices={KNOWN_JID},
        )
        gateway, phone = simulator, SimulatedPhone(simulator)
    else:
        store = make_store(tmp_path / "store.db", KNOWN_JID)

        def factory(store_dsn: str, **kwargs: Any) -> ScriptedClient:
            return scripted.make_client(store_dsn, **kwargs)

        def dial(address: tuple[str, int], timeout: float) -> socket.socket:
            return scripted.dial(address, timeout)

        neonize = NeonizeGateway(
            str(store),
            client_factory=factory,
            first_timeout=timings.first,
            next_timeout=timings.next,
            max_codes=timings.codes,
            link_check=LinkCheck(ttl=0.0, environ={}, connect=dial),
        )
        scripted = ScriptedPhone(neonize, timings)
        gateway, phone = neonize, scripted
    gateway.bind(events)
    try:
        yield Rig(gateway, phone, events, timings)
    finally:
        gateway.close()


@pytest.fixture(params=["simulator", "neonize"])
def kind(request: pytest.FixtureRequest) -> str:
    """The gateway the contract runs against."""
    return str(request.param)


@pytest.fixture
def rig(kind: str, tmp_path: Path) -> Iterator[Rig]:
    """Codes that last a minute: no step races a code's end."""
    with built(kind, tmp_path, STILL) as made:
        yield made


@pytest.fixture
def rotating(kind: str, tmp_path: Path) -> Iterator[Rig]:
    """Codes that keep rotating every 0.3 s: for "nothing more after a stop or a scan"."""
    with built(kind, tmp_path, ROTATING) as made:
        yield made


@pytest.fixture
def short(kind: str, tmp_path: Path) -> Iterator[Rig]:
    """3 codes in 0.4 s: for the rotation and the end of the codes."""
    with built(kind, tmp_path, SHORT) as made:
        yield made


def jid_shaped(jid: str) -> bool:
    user, at, server = jid.partition("@")
    return bool(user) and at == "@" and server == "s.whatsapp.net"


# -- pairing ------------------------------------------------------------------------------------


def test_qr_codes_rotate_then_run_out(short: Rig) -> None:
    rig, top = short, SHORT.codes
    sid = uuid4()
    before = datetime.now(UTC)
    rig.gateway.start(sid, None)
    assert sid in rig.gateway.running()
    calls = rig.wait_name(sid, "qr_exhausted")
    assert names(calls) == ["qr_issued"] * top + ["qr_exhausted"]
    codes = [call.args for call in calls[:top]]
    assert [(attempt, of) for _, _, attempt, of in codes] == [(n, top) for n in (1, 2, 3)]
    assert len({code for code, *_ in codes}) == top
    assert all(code for code, *_ in codes)
    expiries = [expires_at for _, expires_at, *_ in codes]
    assert expiries == sorted(expiries) and len(set(expiries)) == top
    assert before + timedelta(seconds=SHORT.first) <= expiries[0] < before + timedelta(seconds=5)
    assert sid not in rig.gateway.running()
    assert rig.quiet(sid, 2 * SHORT.next) == calls  # no code after the last one


def test_a_scan_connects_the_new_device(rotating: Rig) -> None:
    rig = rotating
    sid = uuid4()
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    rig.phone.scan(sid)
    calls = rig.wait_name(sid, "connected")
    shown = names(calls)[:-1]  # the codes shown until the scan: one unless it came late
    assert shown and set(shown) == {"qr_issued"} and names(calls)[-1] == "connected", calls
    jid, push_name = calls[-1].args
    assert jid_shaped(jid)
    assert push_name
    assert sid in rig.gateway.running()
    # no more codes once scanned (the next one was due within ROTATING.next)
    assert rig.quiet(sid, 2 * ROTATING.next) == calls
    sent = rig.gateway.send_text(sid, "15557654321", "hello")
    assert sent.message_id
    # WhatsApp's own time of the message (the scripted client's was fixed at import).
    assert sent.timestamp.tzinfo is not None
    assert abs(sent.timestamp - datetime.now(UTC)) < timedelta(hours=1)


def test_pair_phone_only_while_qr_codes_are_shown(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotPairing):
        rig.gateway.pair_phone(sid, "15551234567")
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    code = rig.gateway.pair_phone(sid, "15551234567")
    assert len(code) == 8
    rig.phone.scan(sid)
    rig.wait_name(sid, "connected")
    with pytest.raises(NotPairing):
        rig.gateway.pair_phone(sid, "15551234567")


def test_send_text_needs_a_connected_session(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotConnected):
        rig.gateway.send_text(sid, "15557654321", "hello")
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    with pytest.raises(NotConnected):
        rig.gateway.send_text(sid, "15557654321", "hello")


def test_a_chat_presence_needs_a_connected_session_and_then_is_taken(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotConnected):
        rig.gateway.send_chat_presence(sid, "15557654321@s.whatsapp.net", composing=True)
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    with pytest.raises(NotConnected):
        rig.gateway.send_chat_presence(sid, "15557654321@s.whatsapp.net", composing=True)
    rig.phone.scan(sid)
    rig.wait_name(sid, "connected")
    rig.gateway.send_chat_presence(sid, "15557654321@s.whatsapp.net", composing=True)
    rig.gateway.send_chat_presence(sid, "15557654321@s.whatsapp.net", composing=False)


def test_the_active_check_needs_a_connected_session(rig: Rig) -> None:
    sid = uuid4()
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)
    rig.phone.scan(sid)
    rig.wait_name(sid, "connected")
    rig.gateway.stop(sid)
    with pytest.raises(NotConnected):
        rig.gateway.ping(sid, 1.0)


# -- a connected session ------------------------------------------------------------------------


def test_the_active_check_of_a_connected_link_is_answered_and_reports_nothing(rig: Rig) -> None:
    sid, _ = rig.connected()
    before = len(rig.events.of(sid))
    rig.gateway.ping(sid, 5.0)
    rig.gateway.ping(sid, 5.0)
    assert len(rig.quiet(sid, 0.1)) == before


def test_an_unanswered_check_fails_once_its_time_is_up_and_the_link_stays(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.stop_answering(sid)
    started = time.monotonic()
    with pytest.raises(GatewayError, match=r"did not answer the check within 0\.4 s"):
        rig.gateway.ping(sid, 0.4)
    assert 0.4 <= time.monotonic() - started < 5
    assert sid in rig.gateway.running()  # the caller decides what follows (a recycle)
    assert names(rig.quiet(sid, 0.1))[-1] == "connected"


def test_a_dropped_link_is_connection_lost(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.drop(sid)
    rig.disconnected(sid, "connection_lost")
    with pytest.raises(NotConnected):
        rig.gateway.send_text(sid, "15557654321", "hello")


def test_a_remote_logout_is_logged_out_and_the_client_stops(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.remote_logout(sid)
    rig.disconnected(sid, "logged_out")
    assert sid not in rig.gateway.running()
    assert len(rig.quiet(sid, 0.05)) == 3


def test_a_replaced_stream_is_reported_and_the_client_stops(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.replace(sid)
    rig.disconnected(sid, "stream_replaced")
    assert sid not in rig.gateway.running()


def test_a_temporary_ban_says_when_it_ends(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.ban(sid, 3600)
    calls = rig.wait(sid, 3)
    reason, detail, not_before = calls[2].args
    assert (calls[2].name, reason) == ("disconnected", "temporarily_banned")
    assert detail
    assert abs(not_before - (datetime.now(UTC) + timedelta(seconds=3600))) < timedelta(seconds=5)
    assert sid not in rig.gateway.running()


def test_keepalive_failures_and_recoveries_are_reported(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.keepalive(sid, False)
    rig.wait(sid, 3)
    rig.phone.keepalive(sid, True)
    calls = rig.wait(sid, 4)
    assert [(c.name, c.args) for c in calls[2:]] == [
        ("keepalive", (False,)),
        ("keepalive", (True,)),
    ]
    assert sid in rig.gateway.running()


# -- resuming, stopping, logging out --------------------------------------------------------------


def test_a_stored_device_resumes_with_its_jid(rig: Rig) -> None:
    sid = uuid4()
    rig.gateway.start(sid, KNOWN_JID)
    calls = rig.wait(sid, 1)
    assert (calls[0].name, calls[0].args[0]) == ("connected", KNOWN_JID)
    assert sid in rig.gateway.running()


def test_a_device_missing_from_the_store_is_device_unlinked(rig: Rig) -> None:
    sid = uuid4()
    rig.gateway.start(sid, UNKNOWN_JID)
    calls = rig.wait(sid, 1)
    assert (calls[0].name, calls[0].args[0]) == ("disconnected", "device_unlinked")
    assert sid not in rig.gateway.running()


def test_a_device_paired_by_scan_resumes_after_a_stop(rig: Rig) -> None:
    sid, jid = rig.connected()
    rig.gateway.stop(sid)
    rig.gateway.start(sid, jid)
    calls = rig.wait(sid, 3)
    assert (calls[2].name, calls[2].args[0]) == ("connected", jid)


def test_after_stop_nothing_more_is_reported(rotating: Rig) -> None:
    rig = rotating
    sid = uuid4()
    rig.gateway.start(sid, None)
    rig.wait_name(sid, "qr_issued")
    rig.gateway.stop(sid)
    assert sid not in rig.gateway.running()
    shown = rig.quiet(sid, 0.0)  # the codes shown until the stop: one unless it came late
    assert set(names(shown)) == {"qr_issued"}, shown
    assert rig.quiet(sid, 2 * ROTATING.next) == shown  # the next code was due meanwhile
    rig.gateway.stop(sid)  # a no-op


def test_logout_unlinks_the_device_for_good_and_reports_nothing(rig: Rig) -> None:
    sid, jid = rig.connected()
    rig.gateway.logout(sid, jid)
    assert sid not in rig.gateway.running()
    assert len(rig.quiet(sid, 0.05)) == 2
    again = uuid4()
    rig.gateway.start(again, jid)
    calls = rig.wait(again, 1)
    assert (calls[0].name, calls[0].args[0]) == ("disconnected", "device_unlinked")


def test_stop_all_stops_every_client(rotating: Rig) -> None:
    rig = rotating
    pairing = uuid4()
    rig.gateway.start(pairing, None)
    resumed = uuid4()
    rig.gateway.start(resumed, KNOWN_JID)
    rig.wait(resumed, 1)
    rig.wait_name(pairing, "qr_issued")
    rig.gateway.stop_all()
    assert rig.gateway.running() == set()
    shown = rig.quiet(pairing, 0.0)  # the codes shown until the stop: one unless it came late
    assert set(names(shown)) == {"qr_issued"}, shown
    assert rig.quiet(pairing, 2 * ROTATING.next) == shown  # the next code was due meanwhile


# -- WhatsApp unreachable -------------------------------------------------------------------------


def test_starting_while_whatsapp_is_unreachable_is_reported(rig: Rig) -> None:
    sid, _ = rig.connected()
    rig.phone.set_reachable(False)
    rig.disconnected(sid, "connection_lost")
    other = uuid4()
    rig.gateway.start(other, None)
    calls = rig.wait(other, 1)
    assert (calls[0].name, calls[0].args[0]) == ("disconnected", "whatsapp_unreachable")
    assert calls[0].args[1]
    assert other not in rig.gateway.running()
    rig.phone.set_reachable(True)
    rig.gateway.start(other, None)
    assert names(rig.wait(other, 2))[1] == "qr_issued"


# -- messages -------------------------------------------------------------------------------------


def test_a_connected_session_receives_a_text_once(rig: Rig) -> None:
    sid, _ = rig.connected()
    before = datetime.now(UTC)
    rig.phone.inbound(sid, FRIEND, "hello from a friend")
    rig.wait_name(sid, "message_received")
    calls = rig.quiet(sid, 0.05)
    received = [call.args[0] for call in calls if call.name == "message_received"]
    assert len(received) == 1
    [message] = received
    assert isinstance(message, InboundMessage)
    assert (message.text, message.sender, message.chat) == ("hello from a friend", FRIEND, FRIEND)
    assert message.whatsapp_id
    assert before - timedelta(seconds=1) <= message.sent_at <= datetime.now(UTC)


def test_send_text_returns_whatsapps_id_and_acks_report_delivered_then_read(rig: Rig) -> None:
    sid, _ = rig.connected()
    sent = rig.gateway.send_text(sid, FRIEND, "hello")
    assert sent.message_id
    rig.phone.ack(sid, sent.message_id, "delivered")
    rig.wait_name(sid, "message_status")
    rig.phone.ack(sid, sent.message_id, "read")
    calls = rig.events.wait_for(sid, lambda calls: names(calls).count("message_status") == 2)
    statuses = [call.args for call in calls if call.name == "message_status"]
    assert [(ids, status) for ids, status, _ in statuses] == [
        ([sent.message_id], "delivered"),
        ([sent.message_id], "read"),
    ]
    for _, _, at in statuses:
        assert abs(at - datetime.now(UTC)) < timedelta(seconds=5)


def test_send_text_to_a_number_not_on_whatsapp_is_rejected_for_good(rig: Rig) -> None:
    sid, _ = rig.connected()
    with pytest.raises(RecipientRejected):
        rig.gateway.send_text(sid, NOT_ON_WHATSAPP, "hello")
    assert rig.gateway.send_text(sid, FRIEND, "hello").message_id  # the session is fine
