"""Rows of the read models, encoded with msgspec wherever they are stored or sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

UPTIME_DAYS = 30


def window_start(now: datetime, days: int = UPTIME_DAYS) -> datetime:
    """Midnight (UTC) that opens a window of `days` days ending with the day of `now`."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)


class KeyRow(msgspec.Struct, kw_only=True):
    """One API key as the key view knows it: never the key itself, only its hash."""

    key_id: str
    session_id: str
    prefix: str
    key_hash: str
    label: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    position: int = 0

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class SessionRow(msgspec.Struct, kw_only=True):
    """One session as the status view knows it."""

    session_id: str
    name: str
    labels: dict[str, str] = {}
    status: str
    reason: str | None = None
    detail: str | None = None
    retry_attempt: int = 0
    next_retry_at: datetime | None = None
    degraded: bool = False
    desired: str = "running"
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None = None
    jid: str | None = None
    push_name: str | None = None
    qr_code: str | None = None
    qr_expires_at: datetime | None = None
    qr_attempt: int = 0
    qr_max_attempts: int = 0
    requests_per_minute: int | None = None
    last_activity_at: datetime | None = None  # the last message sent or received
    messages_sent: int = 0
    messages_received: int = 0
    messages_delivered: int = 0  # sent messages the recipient's phone got
    messages_read: int = 0  # sent messages the recipient opened
    messages_failed: int = 0  # outbound messages that were not sent
    queue_depth: int = 0  # outbound messages waiting to be sent
    reconnects: int = 0  # tries to connect again: by the service (retries) or an operator
    # Uptime (see `projections.uptime`): from the first link on, seconds in service (meant
    # to be running), and of those, seconds connected, both counted up to `marked_at`; the
    # open interval since then is added when read.
    linked_at: datetime | None = None  # the first Connected
    running_seconds: float = 0.0
    connected_seconds: float = 0.0
    marked_at: datetime | None = None
    # The same two accumulators per UTC day ("YYYY-MM-DD": [running, connected] seconds),
    # for the last UPTIME_DAYS + 1 days, counted up to `marked_at`: the status's window.
    days: dict[str, list[float]] = {}
    version: int = 0
    position: int = 0

    @property
    def is_deleted(self) -> bool:
        return self.desired == "deleted"
