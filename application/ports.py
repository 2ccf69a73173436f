"""Ports: what the application needs from the outside world, as abstract classes.

Both gateways (neonize and the simulator) implement `WhatsAppGateway` and report what happens
through `GatewayEvents`; `tests/contract` runs one suite against both so they cannot drift.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class GatewayEvents(ABC):
    """Callbacks a gateway makes into the application when something happens to a link.

    Implementations must be quick and thread-safe: gateways call them from their own threads.
    Each returns the position of the event it recorded, or None if it recorded nothing.
    """

    @abstractmethod
    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        """A new QR code is ready to be scanned (`attempt` of `max_attempts`)."""

    @abstractmethod
    def qr_exhausted(self, session_id: UUID) -> int | None:
        """The last QR code expired without being scanned; the client has stopped."""

    @abstractmethod
    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        """The link to WhatsApp is up (after a scan, or when a linked device resumed).

        `jid` is the full device JID (``user:device@s.whatsapp.net``) to resume it later.
        """

    @abstractmethod
    def disconnected(self, session_id: UUID, disconnection: Disconnection) -> int | None:
        """The link went down, or could not be made (`Disconnection` says why)."""

    @abstractmethod
    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        """Keepalive pings to WhatsApp started failing (False) or work again (True)."""

    @abstractmethod
    def message_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        """A text message came in. The same `whatsapp_id` reported twice is recorded once."""

    @abstractmethod
    def message_status(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        """WhatsApp acknowledged messages this session sent: `status` is ``delivered`` or
        ``read`` (a `domain.values.MessageStatus`). Unknown ids and repeats are ignored."""


@dataclass(frozen=True)
class Disconnection:
    """Why a link went down, or could not be made, as a gateway reports it."""

    reason: str  # a `domain.values.Reason`
    detail: str = ""  # a short human-readable explanation (the library's message)
    not_before: datetime | None = None  # the earliest a new attempt can succeed (a ban's end)


class MessageIndex(ABC):
    """Messages a session no longer remembers (it keeps the last few hundred), found in the
    messages view: a late receipt, or an inbound message WhatsApp delivered again."""

    @abstractmethod
    def sent_message(self, session_id: UUID, whatsapp_id: str) -> tuple[str, str] | None:
        """The (message id, status) of the session's outbound message with that WhatsApp id."""

    @abstractmethod
    def received_message(self, session_id: UUID, whatsapp_id: str) -> bool:
        """Whether the session recorded an inbound message with that WhatsApp id."""

    @abstractmethod
    def earlier_message(self, session_id: UUID, idempotency_key: str) -> EarlierMessage | None:
        """The session's outbound message first queued with that idempotency key."""


@dataclass(frozen=True)
class EarlierMessage:
    """An outbound message as the messages view knows it, for a retried send."""

    message_id: str
    version: int  # its MessageQueued event's version in the session (where its text is)
    to: str
    status: str
    queued_at: datetime


class RevocationLog(ABC):
    """Where the recorder keeps the revocations it writes with their events (see
    `application.revocations`): a retried revoke or delete finds what it must wait for."""

    @abstractmethod
    def revocation_position(self, session_id: str, key_id: str | None) -> int | None:
        """The position of the event that revoked `key_id` (or, with None, that deleted the
        session `session_id`), or None if no such revocation is recorded."""


@dataclass(frozen=True)
class InboundMessage:
    """A text message received by a session's WhatsApp account."""

    whatsapp_id: str  # WhatsApp's id of the message
    sender: str  # the sender's JID (``user@s.whatsapp.net``)
    chat: str  # the chat it came in (the sender, or a group ``…@g.us``)
    text: str
    sent_at: datetime  # when the sender's phone sent it
    push_name: str = ""  # the sender's display name, if WhatsApp gave one


@dataclass(frozen=True)
class SentMessage:
    """What WhatsApp answered for a message sent."""

    message_id: str
    timestamp: datetime


class WhatsAppGateway(ABC):
    """The link to WhatsApp, one client per session (neonize, or the simulator).

    A client's life runs on the gateway's own threads and is reported through `GatewayEvents`;
    `start`, `stop` and `running` return at once, while `logout` of a connected client,
    `pair_phone` and `send_text` wait for WhatsApp's answer.

    After ``disconnected(connection_lost)`` or ``disconnected(connect_failure)`` a client may
    reconnect by itself (whatsmeow does after the server closed the socket), reporting
    `connected` with no `start`; the application's retry calls `start`, which restarts it.
    After every other reason the client has stopped.
    """

    @abstractmethod
    def bind(self, events: GatewayEvents) -> None:
        """Set where the gateway reports what happens; called once before `start`."""

    @abstractmethod
    def start(self, session_id: UUID, device_jid: str | None, proxy: str | None = None) -> None:
        """Start a client: resume `device_jid` if given, else begin pairing with QR codes.

        Starting a session that is already running restarts it. A device that can no longer
        be resumed is reported as ``disconnected(device_unlinked)``, never a crash. With
        `proxy` (``socks5://…`` or ``http(s)://…``, credentials included) the client dials
        WhatsApp through it and nothing else; one that cannot be reached is reported as
        ``disconnected(proxy_unreachable)`` with the library's words (never the password).
        """

    @abstractmethod
    def stop(self, session_id: UUID) -> None:
        """Stop the client, keeping the device linked; stopping a stopped session is a no-op."""

    @abstractmethod
    def logout(self, session_id: UUID, device_jid: str | None) -> None:
        """Unlink the device (the running client's, else `device_jid` from the store) and
        stop the client. Reports nothing: the session is being deleted."""

    @abstractmethod
    def pair_phone(self, session_id: UUID, phone: str) -> str:
        """The 8-character code to type on the phone `phone` (digits with country code).

        Only while the session is pairing (showing QR codes); else raises `NotPairing`.
        """

    @abstractmethod
    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        """Send a text to the JID `to`; raises `NotConnected` unless the session's client is
        connected, `RecipientRejected` when WhatsApp refuses that recipient for good, and
        `GatewayError` for a failure that may pass (timeouts, server errors)."""

    @abstractmethod
    def send_chat_presence(self, session_id: UUID, to: str, *, composing: bool) -> None:
        """Show the chat `to` that the session is typing (`composing`) or stopped typing;
        raises `NotConnected` unless the session's client is connected, `GatewayError` if
        WhatsApp did not take it."""

    @abstractmethod
    def ping(self, session_id: UUID, timeout: float) -> None:
        """One round trip to WhatsApp on the session's connection (the silence watchdog's
        active check), waiting `timeout` seconds at most. Raises `NotConnected` unless the
        session's client is connected, and `GatewayError` when WhatsApp does not answer."""

    @abstractmethod
    def running(self) -> set[UUID]:
        """The sessions that have a client (pairing, connecting or connected) right now."""

    @abstractmethod
    def stop_all(self) -> None:
        """Stop every client, keeping devices linked; the gateway can start them again."""

    @abstractmethod
    def close(self) -> None:
        """Stop every client for good."""


class PhoneSimulator(ABC):
    """What a phone and a network do to a session, for demos and tests (simulator gateway only).

    Each returns the position of the event it caused, or None if nothing was recorded, and
    raises `SimulatorError` when the session is not in a state where that can happen.
    """

    @abstractmethod
    def scan(self, session_id: UUID) -> int | None:
        """The phone scans the QR code being shown (or types the pairing code)."""

    @abstractmethod
    def drop(self, session_id: UUID) -> int | None:
        """The network drops the connection."""

    @abstractmethod
    def remote_logout(self, session_id: UUID) -> int | None:
        """The user unlinks the device from the phone."""

    @abstractmethod
    def replace(self, session_id: UUID) -> int | None:
        """The same device connects from somewhere else (WhatsApp's stream replaced)."""

    @abstractmethod
    def ban(self, session_id: UUID, seconds: float) -> int | None:
        """WhatsApp bans the account temporarily for `seconds`: every start before the
        ban's end is refused with the same ban."""

    @abstractmethod
    def outdated(self, session_id: UUID) -> int | None:
        """WhatsApp refuses this client's version (until a person upgrades and reconnects)."""

    @abstractmethod
    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        """Keepalive pings start failing (False) or work again (True)."""

    @abstractmethod
    def silence(self, session_id: UUID, answers_checks: bool) -> None:
        """The connected session goes silent: its link stays up, but nothing reaches it any
        more (texts sent to it and receipts are lost) until its next connection; the active
        check is answered or not as `answers_checks` says."""

    @abstractmethod
    def inbound(self, session_id: UUID, sender: str, text: str) -> int | None:
        """Someone (the JID `sender`) sends the session's account a text message."""

    @abstractmethod
    def ack(self, session_id: UUID, whatsapp_id: str, status: str) -> int | None:
        """The recipient's phone acknowledges a message the session sent (`status` is
        ``delivered`` or ``read``)."""

    @abstractmethod
    def set_reachable(self, reachable: bool) -> None:
        """Make WhatsApp unreachable (every connection drops, every start fails) or back."""
