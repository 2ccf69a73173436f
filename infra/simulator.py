"""The simulator gateway: the `WhatsAppGateway` contract with no network.

QR codes rotate on WhatsApp's timings (the first lasts 60 s, the next ones 20 s, 6 in all;
configurable), then the session expires. Hooks let a demo or a test scan the code, drop the
connection, log out from the phone, as a real phone and network would.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from application.errors import SimulatorError
from application.ports import GatewayEvents, PhoneSimulator, WhatsAppGateway
from domain.values import Reason
from infra.timers import TimerThread


@dataclass
class _Client:
    generation: int = 0
    phase: str = "stopped"  # stopped | pairing | connected | disconnected
    attempt: int = 0
    device_jid: str | None = None


class SimulatorGateway(WhatsAppGateway, PhoneSimulator):
    def __init__(
        self,
        *,
        first_timeout: float = 60.0,
        next_timeout: float = 20.0,
        max_codes: int = 6,
        resume_delay: float = 0.05,
    ) -> None:
        self.first_timeout = first_timeout
        self.next_timeout = next_timeout
        self.max_codes = max_codes
        self.resume_delay = resume_delay
        self._events: GatewayEvents | None = None
        self._clients: dict[UUID, _Client] = {}
        self._lock = threading.RLock()
        self._timers = TimerThread("simulator")

    @property
    def events(self) -> GatewayEvents:
        if self._events is None:
            raise RuntimeError("bind() the gateway before starting sessions")
        return self._events

    def bind(self, events: GatewayEvents) -> None:
        self._events = events

    # -- the port -----------------------------------------------------------------------

    def start(self, session_id: UUID, device_jid: str | None) -> None:
        with self._lock:
            client = self._clients.setdefault(session_id, _Client())
            client.generation += 1
            generation = client.generation
            if device_jid:
                client.device_jid = device_jid
                client.phase = "resuming"
                self._timers.call_later(
                    self.resume_delay, lambda: self._resume(session_id, generation)
                )
                return
            client.phase = "pairing"
            client.attempt = 0
        self._next_qr(session_id, generation)

    def stop(self, session_id: UUID) -> None:
        with self._lock:
            client = self._clients.get(session_id)
            if client is not None:
                client.generation += 1
                client.phase = "stopped"

    def logout(self, session_id: UUID) -> None:
        with self._lock:
            self.stop(session_id)
            self._clients.pop(session_id, None)

    def stop_all(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.generation += 1
                client.phase = "stopped"

    def close(self) -> None:
        self._timers.stop()
        self.stop_all()

    # -- what a phone and a network do ------------------------------------------------------

    def scan(self, session_id: UUID) -> int | None:
        """The phone scans the QR code being shown."""
        with self._lock:
            client = self._client_in(session_id, "pairing", "no QR code is being shown")
            client.generation += 1
            client.phase = "connected"
            client.device_jid = f"{secrets.randbelow(10**11):011d}@s.whatsapp.net"
            jid = client.device_jid
        return self.events.connected(session_id, jid, "Simulated phone")

    def drop(self, session_id: UUID) -> int | None:
        """The network drops the connection."""
        with self._lock:
            client = self._client_in(session_id, "connected", "the session is not connected")
            client.phase = "disconnected"
        return self.events.disconnected(session_id, Reason.CONNECTION_LOST.value)

    def remote_logout(self, session_id: UUID) -> int | None:
        """The user unlinks the device from the phone."""
        with self._lock:
            self._client_in(session_id, "connected", "the session is not connected")
            self._clients.pop(session_id, None)
        return self.events.disconnected(session_id, Reason.LOGGED_OUT.value)

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

    def _resume(self, session_id: UUID, generation: int) -> None:
        with self._lock:
            client = self._current(session_id, generation)
            if client is None or client.device_jid is None:
                return
            client.phase = "connected"
            jid = client.device_jid
        self.events.connected(session_id, jid, "Simulated phone")

    def _next_qr(self, session_id: UUID, generation: int) -> None:
        with self._lock:
            client = self._current(session_id, generation)
            if client is None or client.phase != "pairing":
                return
            if client.attempt >= self.max_codes:
                client.phase = "expired"
                exhausted = True
            else:
                exhausted = False
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
