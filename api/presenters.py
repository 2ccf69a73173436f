"""From read-model rows to response bodies; the health vocabulary lives here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from api.schemas import (
    EventOut,
    Health,
    KeyOut,
    MessageOut,
    MetricsOut,
    QrOut,
    QrSummaryOut,
    RateLimitOut,
    SessionOut,
    StatusOut,
    StatusValue,
)
from domain.values import DesiredState, Status
from projections.history import HistoryEntry
from projections.keys import KeyRow
from projections.messages import MessageRow
from projections.status import SessionRow, status_uptime


def health(row: SessionRow) -> Health:
    """``stopped`` (the operator stopped it), ``healthy`` (connected, keepalives answered),
    ``degraded`` (connected, but WhatsApp stopped answering keepalives), ``starting``
    (connecting: waiting for a scan, a resume or a retry), ``unhealthy`` (disconnected or
    expired while it is meant to be running; `reason` says why, `nextRetryAt` when the
    service tries again, if it does)."""
    if row.desired == DesiredState.STOPPED:
        return "stopped"
    if row.status == Status.CONNECTED:
        return "degraded" if row.degraded else "healthy"
    if row.status == Status.CONNECTING:
        return "starting"
    return "unhealthy"


def rate_limit(row: SessionRow, default: int) -> RateLimitOut:
    if row.requests_per_minute is None:
        return RateLimitOut(requests_per_minute=default, is_default=True)
    return RateLimitOut(requests_per_minute=row.requests_per_minute, is_default=False)


def _status(row: SessionRow) -> StatusValue:
    return cast(StatusValue, row.status)


def session_out(row: SessionRow, default_rpm: int) -> SessionOut:
    qr = None
    if row.qr_code is not None and row.qr_expires_at is not None:
        qr = QrSummaryOut(
            expires_at=row.qr_expires_at, attempt=row.qr_attempt, max_attempts=row.qr_max_attempts
        )
    return SessionOut(
        session_id=row.session_id,
        name=row.name,
        labels=row.labels,
        status=_status(row),
        reason=row.reason,
        detail=row.detail,
        retry_attempt=row.retry_attempt,
        next_retry_at=row.next_retry_at,
        stopped=row.desired == DesiredState.STOPPED,
        health=health(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
        connected_at=row.connected_at,
        phone_jid=row.jid,
        push_name=row.push_name,
        qr=qr,
        rate_limit=rate_limit(row, default_rpm),
    )


def status_out(row: SessionRow, now: datetime | None = None) -> StatusOut:
    return StatusOut(
        session_id=row.session_id,
        status=_status(row),
        connected_at=row.connected_at,
        health=health(row),
        metrics=MetricsOut(
            messages_sent=row.messages_sent,
            messages_received=row.messages_received,
            uptime=status_uptime(row, now or datetime.now(UTC)),
            messages_delivered=row.messages_delivered,
            messages_read=row.messages_read,
            messages_failed=row.messages_failed,
            queue_depth=row.queue_depth,
        ),
        reason=row.reason,
        detail=row.detail,
        retry_attempt=row.retry_attempt,
        next_retry_at=row.next_retry_at,
        qr_expires_at=row.qr_expires_at,
        last_activity_at=row.last_activity_at,
        updated_at=row.updated_at,
    )


def qr_out(row: SessionRow) -> QrOut | None:
    if row.qr_code is None or row.qr_expires_at is None:
        return None
    return QrOut(
        session_id=row.session_id,
        code=row.qr_code,
        expires_at=row.qr_expires_at,
        attempt=row.qr_attempt,
        max_attempts=row.qr_max_attempts,
    )


def key_out(row: KeyRow) -> KeyOut:
    return KeyOut.of(row, active=row.is_active)


def label_filter(labels: list[str] | None) -> dict[str, str]:
    """``["region:eu", "useCase:support"]`` as a dict; raises ValueError if malformed."""
    wanted: dict[str, Any] = {}
    for item in labels or []:
        key, sep, value = item.partition(":")
        if not sep or not key or not value:
            raise ValueError(f"label filter {item!r} must read key:value")
        wanted[key] = value
    return wanted


def event_out(entry: HistoryEntry) -> EventOut:
    return EventOut.of(entry)


def message_out(row: MessageRow, text: str | None) -> MessageOut:
    return MessageOut.of(row, text=text)
