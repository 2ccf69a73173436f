"""Ports: what the application needs from the outside world, as abstract classes."""

from __future__ import annotations

from abc import ABC, abstractmethod
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
        """A new QR code is ready to be scanned."""

    @abstractmethod
    def qr_exhausted(self, session_id: UUID) -> int | None:
        """The last QR code expired without being scanned."""

    @abstractmethod
    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        """The link to WhatsApp is up (after a scan, or when a linked device resumed)."""

    @abstractmethod
    def disconnected(self, session_id: UUID, reason: str) -> int | None:
        """The link went down for `reason` (``connection_lost``, ``logged_out``…)."""


class WhatsAppGateway(ABC):
    """The link to WhatsApp, one client per session (neonize, or the simulator)."""

    @abstractmethod
    def bind(self, events: GatewayEvents) -> None:
        """Set where the gateway reports what happens; called once before `start`."""

    @abstractmethod
    def start(self, session_id: UUID, device_jid: str | None) -> None:
        """Start a client: resume `device_jid` if given, else begin pairing with QR codes.

        Starting a session that is already running restarts it.
        """

    @abstractmethod
    def stop(self, session_id: UUID) -> None:
        """Stop the client, keeping the device linked; stopping a stopped session is a no-op."""

    @abstractmethod
    def logout(self, session_id: UUID) -> None:
        """Unlink the device from the phone and stop the client."""

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
        """The phone scans the QR code being shown."""

    @abstractmethod
    def drop(self, session_id: UUID) -> int | None:
        """The network drops the connection."""

    @abstractmethod
    def remote_logout(self, session_id: UUID) -> int | None:
        """The user unlinks the device from the phone."""
