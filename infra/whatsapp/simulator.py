"""The simulator gateway: the `WhatsAppGateway` contract with no network.

QR codes rotate on WhatsApp's timings (the first lasts 60 s, the next ones 20 s, 6 in all;
configurable), then the session expires. Hooks let a demo or a test do what a real phone and
network do: scan the code, drop the connection, log out from the phone, connect the device
elsewhere (stream replaced), ban the account for a while (a start before the ban's end is
refused with the same ban, as WhatsApp does), refuse the client as outdated, fail keepalives,
make WhatsApp unreachable, receive a text, acknowledge a sent one, go silent (the link stays
up but nothing reaches it until the next connection; the active check of the silence watchdog
is answered or not, as asked). Recipients whose number
starts with 0 (``0…@s.whatsapp.net``) are "not on WhatsApp": sending to them is refused for
good.
A session's proxy is honoured as far as a simulation can without a network: each start through
a proxy on this machine (a loopback address or ``localhost``) first opens a TCP connection to it
(nothing is sent), and one that does not answer ends the start as ``proxy_unreachable``, as the
real gateway reports it; a proxy elsewhere is taken as answering (the simulator never leaves
the machine, nor resolves a name). `proxy_of` tells what a start used.
`tests/contract` holds it to the same contract as the neonize adapter.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Callable, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from application.errors import (
    GatewayError,
    NotConnected,
    NotPairing,
    RecipientRejected,
    SimulatorError,
)
from application.ports import (
    Disconnection,
    GatewayEvents,
    InboundMessage,
    PhoneSimulator,
    SentMessage,
    WhatsAppGateway,
)
from domain.proxy import hide_password, parse_proxy_url
from domain.values import MessageStatus, Reason
from infra.runtime.timers import TimerThread

PUSH_NAME = "Simulated phone"
BAN_DETAIL = "simulated ban"
#: Seconds the simulator waits for a session's proxy to accept a connection.
PROXY_TIMEOUT = 3.0


@dataclass(slots=True)
class _Client:
    generation: int = 0
    phase: str = "stopped"  # stopped | pairing | resuming | connected | disconnected | expired
    attempt: int = 0
    silent: bool = False  # nothing reaches the link (until its next connection)
    answers_checks: bool = True  # while silent: whether the active check is answered
    #: Held while a QR code is reported, and by what ends the codes (stop, a scan): once
    #: those return, no code of theirs is reported any more. Taken before the gateway's lock.
    reporting: threading.RLock = field(default_factory=threading.RLock)


class SimulatorGateway(WhatsAppGateway, PhoneSimulator):
    def __init__(
        self,
        *,
        first_timeout: float = 60.0,
        next_timeout: float = 20.0,
        max_codes: int = 6,
        resume_delay: float = 0.05,
        devices: MutableSet[str] | None = None,
        phone_delay: float = 0.0,
    ) -> None:
        self.first_timeout = first_timeout
        self.next_timeout = next_timeout
        self.max_codes = max_codes
        self.resume_delay = resume_delay
        # Seconds the simulated phone takes to scan a code (a slow phone: a call in progress).
        self.phone_delay = phone_delay
        self.reachable = True
        self._events: GatewayEvents | None = None
        self._clients: dict[UUID, _Client] = {}
        # The "device store": devices linked to a phone (kept in PostgreSQL by the service,
        # as whatsmeow keeps its own, so that a restarted worker resumes them).
        self._devices: MutableSet[str] = set() if devices is None else devices
        self._lock = threading.RLock()
        self._timers = TimerThread("simulator")
        self._proxies: dict[UUID, str | None] = {}
        self._banned: dict[UUID, datetime] = {}  # session -> the end of its ban
        self._presences: dict[UUID, list[tuple[datetime, str, str]]] = {}

    @property
    def events(self) -> GatewayEvents:
        if self._events is None:
            raise RuntimeError("bind() the gateway before starting sessions")
        return self._events

    def bind(self, events: GatewayEvents) -> None:
        self._events = events

    # -- the port -----------------------------------------------------------------------

    def start(self, session_id: UUID, device_jid: str | None, proxy: str | None = None) -> None:
        with self._lock:
            client = self._clients.setdefault(session_id, _Client())
            client.generation += 1
            generation = client.generation
            client.attempt = 0
            client.phase = "resuming" if device_jid else "pairing"
            client.silent = False  # a new connection: heard again
            self._proxies[session_id] = proxy

        def begin() -> None:
            self._begin(session_id, generation, device_jid, proxy)

        # Like a real client, the outcome is reported from the gateway's own thread; a dial to
        # a proxy gets a thread of its own (a silent one must not hold up every session).
        self._timers.call_later(
            self.resume_delay if device_jid else 0.0,
            begin if proxy is None else lambda: _spawn(begin, f"simulator-{session_id.hex[:8]}"),
        )

    def proxy_of(self, session_id: UUID) -> str | None:
        """The proxy the session's last start dialled through (None: directly)."""
        with self._lock:
            return self._proxies.get(session_id)

    def stop(self, session_id: UUID) -> None:
        with self._lock:
            client = self._clients.get(session_id)
        if client is None:
            return
        with client.reporting, self._lock:  # a code being reported is reported first
            client.generation += 1
            client.phase = "stopped"

    def logout(self, session_id: UUID, device_jid: str | None) -> None:
        with self._lock:
            self.stop(session_id)
            self._clients.pop(session_id, None)
        if device_jid:  # without the lock: the store may be a database
            self._devices.discard(device_jid)

    def pair_phone(self, session_id: UUID, phone: str) -> str:
        with self._lock:
            client = self._clients.get(session_id)
            if client is None or client.phase != "pairing" or client.attempt == 0:
                raise NotPairing("the session is not showing a QR code")
        alphabet = "ABCDEFGHJKLMNPQRSTVWXYZ0123456789"
        return "".join(secrets.choice(alphabet) for _ in range(8))

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        with self._lock:
            client = self._clients.get(session_id)
            if client is None or client.phase != "connected":
                raise NotConnected("the session is not connected")
        if to.startswith("0"):
            raise RecipientRejected(f"{to} is not on WhatsApp (simulated)")
        return SentMessage(_whatsapp_id(), datetime.now(UTC))

    def send_chat_presence(self, session_id: UUID, to: str, *, composing: bool) -> None:
        with self._lock:
            client = self._clients.get(session_id)
            if client is None or client.phase != "connected":
                raise NotConnected("the session is not connected")
            state = "composing" if composing else "paused"
            self._presences.setdefault(session_id, []).append((datetime.now(UTC), to, state))

    def presences(self, session_id: UUID) -> list[tuple[datetime, str, str]]:
        """The chat presences the session sent, oldest first: (when, to, composing|paused)."""
        with self._lock:
            return list(self._presences.get(session_id, ()))

    def ping(self, session_id: UUID, timeout: float) -> None:
        with self._lock:
            client = self._clients.get(session_id)
            if client is None or client.phase != "connected":
                raise NotConnected("the session is not connected")
            answered = not client.silent or client.answers_checks
        if not answered:  # as with WhatsApp: no answer comes, the wait runs out
            time.sleep(timeout)
            raise GatewayError(
                f"WhatsApp did not answer the check within {timeout:g} s (simulated)"
            )

    def running(self) -> set[UUID]:
        with self._lock:
            return {
                session_id
                for session_id, client in self._clients.items()
                if client.phase in ("pairing", "resuming", "connected")
            }

    def stop_all(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            with client.reporting, self._lock:
                client.generation += 1
                client.phase = "stopped"

    def close(self) -> None:
        self._timers.stop()
        self.stop_all()

    # -- what a phone and a network do ------------------------------------------------------

    def scan(self, session_id: UUID) -> int | None:
        if self.phone_delay:
            time.sleep(self.phone_delay)  # not under the lock: other sessions go on
        with self._lock:
            client = self._client_in(session_id, "pairing", "no QR code is being shown")
        with client.reporting, self._lock:
            if self._clients.get(session_id) is not client or client.phase != "pairing":
                raise SimulatorError("no QR code is being shown")
            client.generation += 1
            client.phase = "connected"
            jid = f"{secrets.randbelow(10**11):011d}:{secrets.randbelow(90) + 10}@s.whatsapp.net"
        self._devices.add(jid)  # without the lock: the store may be a database
        return self.events.connected(session_id, jid, PUSH_NAME)

    def drop(self, session_id: UUID) -> int | None:
        dropped = Disconnection(Reason.CONNECTION_LOST.value, "the network dropped the link")
        return self._end(session_id, dropped)

    def remote_logout(self, session_id: UUID) -> int | None:
        with self._lock:
            self._client_in(session_id, "connected", "the session is not connected")
        unlinked = Disconnection(Reason.LOGGED_OUT.value, "unlinked from the phone")
        return self._end(session_id, unlinked, forget=True)

    def replace(self, session_id: UUID) -> int | None:
        replaced = Disconnection(Reason.STREAM_REPLACED.value, "the device connected elsewhere")
        return self._end(session_id, replaced)

    def ban(self, session_id: UUID, seconds: float) -> int | None:
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        with self._lock:
            self._client_in(session_id, "connected", "the session is not connected")
            self._banned[session_id] = until
        banned = Disconnection(Reason.TEMPORARILY_BANNED.value, BAN_DETAIL, until)
        return self._end(session_id, banned)

    def outdated(self, session_id: UUID) -> int | None:
        refused = "WhatsApp refuses this client version (simulated)"
        return self._end(session_id, Disconnection(Reason.CLIENT_OUTDATED.value, refused))

    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        with self._lock:
            self._client_in(session_id, "connected", "the session is not connected")
        return self.events.keepalive(session_id, healthy)

    def silence(self, session_id: UUID, answers_checks: bool) -> None:
        with self._lock:
            client = self._client_in(session_id, "connected", "the session is not connected")
            client.silent = True
            client.answers_checks = answers_checks

    def inbound(self, session_id: UUID, sender: str, text: str) -> int | None:
        with self._lock:
            client = self._client_in(session_id, "connected", "the session is not connected")
            if client.silent:
                return None  # lost on the way: a silent link receives nothing
        message = InboundMessage(
            whatsapp_id=_whatsapp_id(),
            sender=sender,
            chat=sender,
            text=text,
            sent_at=datetime.now(UTC),
        )
        return self.events.message_received(session_id, message)

    def ack(self, session_id: UUID, whatsapp_id: str, status: str) -> int | None:
        if status not in (MessageStatus.DELIVERED, MessageStatus.READ):
            raise SimulatorError(f"a phone acknowledges delivered or read, not {status!r}")
        with self._lock:
            client = self._client_in(session_id, "connected", "the session is not connected")
            if client.silent:
                return None  # lost on the way: a silent link receives nothing
        return self.events.message_status(session_id, [whatsapp_id], status, datetime.now(UTC))

    def set_reachable(self, reachable: bool) -> None:
        with self._lock:
            self.reachable = reachable
            dropped = (
                []
                if reachable
                else [
                    session_id for session_id, c in self._clients.items() if c.phase == "connected"
                ]
            )
        lost = Disconnection(Reason.CONNECTION_LOST.value, "WhatsApp is unreachable")
        for session_id in dropped:
            self._end(session_id, lost)

    def phase(self, session_id: UUID) -> str:
        with self._lock:
            client = self._clients.get(session_id)
            return client.phase if client else "stopped"

    # -- internals ---------------------------------------------------------------------------

    def _client_in(self, session_id: UUID, phase: str, message: str) -> _Client:
        client = self._clients.get(session_id)
        if client is None or client.phase != phase:
            raise SimulatorError(message)
        return client

    def _current(self, session_id: UUID, generation: int) -> _Client | None:
        client = self._clients.get(session_id)
        if client is None or client.generation != generation:
            return None
        return client

    def _end(
        self, session_id: UUID, disconnection: Disconnection, *, forget: bool = False
    ) -> int | None:
        """The connected client goes down (as `disconnection` says) and stops (WhatsApp
        closed it)."""
        with self._lock:
            client = self._client_in(session_id, "connected", "the session is not connected")
            client.generation += 1
            client.phase = "disconnected"
            if forget:
                self._clients.pop(session_id, None)
        return self.events.disconnected(session_id, disconnection)

    def _begin(
        self, session_id: UUID, generation: int, device_jid: str | None, proxy: str | None
    ) -> None:
        # The store is looked up before the lock is taken: it may be a database query; so is
        # the proxy dialled.
        stored = device_jid is None or device_jid in self._devices
        proxy_failure = _proxy_failure(proxy) if proxy is not None else None
        outcome: Disconnection | None = None
        with self._lock:
            client = self._current(session_id, generation)
            if client is None:
                return
            ban = self._banned.get(session_id)
            if ban is not None and ban <= datetime.now(UTC):
                del self._banned[session_id]
                ban = None
            if ban is not None and device_jid is not None:
                outcome = Disconnection(Reason.TEMPORARILY_BANNED.value, BAN_DETAIL, ban)
            elif proxy_failure is not None:
                outcome = Disconnection(Reason.PROXY_UNREACHABLE.value, proxy_failure)
            elif not self.reachable:
                unreachable = "failed to dial WhatsApp (simulated)"
                outcome = Disconnection(Reason.WHATSAPP_UNREACHABLE.value, unreachable)
            elif not stored:
                # Like the neonize adapter: a device missing from the store is never resumed.
                missing = "the device is not in the store"
                outcome = Disconnection(Reason.DEVICE_UNLINKED.value, missing)
            elif device_jid is not None:
                client.phase = "connected"
            if outcome is not None:
                client.phase = "disconnected"
        if outcome is not None:
            self.events.disconnected(session_id, outcome)
        elif device_jid is not None:
            self.events.connected(session_id, device_jid, PUSH_NAME)
        else:
            self._next_qr(session_id, generation)

    def _next_qr(self, session_id: UUID, generation: int) -> None:
        with self._lock:
            client = self._current(session_id, generation)
        if client is None:
            return
        with client.reporting:  # what stops the codes waits for this report
            with self._lock:
                if self._current(session_id, generation) is not client:
                    return
                if client.phase != "pairing":
                    return
                exhausted = client.attempt >= self.max_codes
                if exhausted:
                    client.phase = "expired"
                else:
                    client.attempt += 1
                attempt = client.attempt
            if exhausted:
                self.events.qr_exhausted(session_id)
                return
            lifetime = self.first_timeout if attempt == 1 else self.next_timeout
            code = f"2@{secrets.token_urlsafe(48)},{secrets.token_urlsafe(32)},{attempt}"
            expires_at = datetime.now(UTC) + timedelta(seconds=lifetime)
            self.events.qr_issued(session_id, code, expires_at, attempt, self.max_codes)
        self._timers.call_later(lifetime, lambda: self._next_qr(session_id, generation))


def _spawn(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()


def _proxy_failure(proxy: str) -> str | None:
    """None if the proxy accepts a TCP connection (or is not on this machine), else why not
    (without its password)."""
    address = parse_proxy_url(proxy)
    if not _on_this_machine(address.host):
        return None
    where = f"{address.host}:{address.port}"
    try:
        socket.create_connection((address.host, address.port), PROXY_TIMEOUT).close()
    except OSError as error:
        detail = f"cannot reach the proxy {where} (simulated): {error}"
        return hide_password(detail, address.password)
    return None


def _on_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _whatsapp_id() -> str:
    """A message id shaped like WhatsApp's (``3EB0`` and 16 hex digits)."""
    return "3EB0" + secrets.token_hex(8).upper()
