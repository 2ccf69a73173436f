"""The reconnect policy: whether, and when, a session that went down is tried again.

- The link dropped, WhatsApp could not be reached or refused the connection, or the device
  store (its database) failed: exponential backoff with jitter, capped
  (``base · factor^(attempt-1)``, at most ``cap``, ± ``jitter``).
- A temporary ban: once the ban has ended (plus a little jitter so sessions spread out).
- Logged out, device unlinked, QR codes expired, pairing failed: never — the phone must scan a
  new QR code, which an operator asks for with a reconnect.
- Replaced by another client: never — fighting it would make the two clients take the device
  from each other in turn; the status reports it instead.
- Client outdated: never — only a new sessiond release helps.
- The service or the worker holding the session went away, or handed it over: at once
  (attempt 1 has no delay).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.values import Reason

BACKOFF_REASONS = frozenset(
    {
        Reason.CONNECTION_LOST,
        Reason.WHATSAPP_UNREACHABLE,
        Reason.CONNECT_FAILURE,
        Reason.STORE_UNAVAILABLE,
    }
)
IMMEDIATE_REASONS = frozenset({Reason.SERVICE_RESTARTED, Reason.GATEWAY_LOST, Reason.HANDED_OVER})
NEEDS_QR_REASONS = frozenset(
    {Reason.LOGGED_OUT, Reason.DEVICE_UNLINKED, Reason.QR_EXPIRED, Reason.PAIRING_FAILED}
)


@dataclass(frozen=True)
class ReconnectPolicy:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try number `attempt` (1 for the first retry)."""
        raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.cap, raw * (1.0 + spread)))

    def next_retry(
        self,
        reason: str,
        attempt: int,
        now: datetime,
        not_before: datetime | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after failure number `attempt` for `reason`; None: do not."""
        if reason in IMMEDIATE_REASONS:
            return now
        if reason == Reason.TEMPORARILY_BANNED:
            end = not_before or now + timedelta(seconds=self.cap)
            spread = (rng or random).uniform(0.0, self.jitter * self.base)
            return max(now, end) + timedelta(seconds=spread)
        if reason in BACKOFF_REASONS:
            return now + timedelta(seconds=self.delay(attempt, rng))
        return None

    @staticmethod
    def needs_new_qr(reason: str | None) -> bool:
        return reason in NEEDS_QR_REASONS
