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
    # Uptime accumulators: seconds meant to be running, and of those, seconds connected,
    # both counted up to `marked_at`; the open interval since then is added when read.
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

    def uptime(self, now: datetime) -> float | None:
        """Share of the time meant to be running that the session was connected."""
        running, connected = self.running_seconds, self.connected_seconds
        if self.marked_at is not None and now > self.marked_at:
            open_seconds = (now - self.marked_at).total_seconds()
            if self.desired == "running":
                running += open_seconds
                if self.status == "connected":
                    connected += open_seconds
        if running <= 0:
            return None
        return min(1.0, connected / running)

    def uptime_window(self, now: datetime, days: int = UPTIME_DAYS) -> float | None:
        """Uptime over the current UTC day and the `days - 1` whole days before it (or since
        creation, if younger): what the status shows."""
        if not self.days and self.running_seconds > 0:
            return self.uptime(now)  # a row written before the days were kept
        # On the status read path: one pass over at most 32 days, and no datetime built
        # unless the open interval began before the window.
        first = (now.astimezone(UTC).date() - timedelta(days=days - 1)).isoformat()
        running = connected = 0.0
        for day, (day_running, day_connected) in self.days.items():
            if day >= first:
                running += day_running
                connected += day_connected
        marked = self.marked_at
        if marked is not None and now > marked and self.desired == "running":
            inside = marked.astimezone(UTC).date().isoformat() >= first
            open_seconds = (now - (marked if inside else window_start(now, days))).total_seconds()
            running += open_seconds
            if self.status == "connected":
                connected += open_seconds
        if running <= 0:
            return None
        return min(1.0, connected / running)
