"""From read-model rows to response bodies; the health vocabulary lives here."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from api.schemas import (
    EventOut,
    Health,
    HealthReason,
    KeyOut,
    MessageOut,
    MetricsOut,
    QrOut,
    QrSummaryOut,
    RateLimitOut,
    RestrictionOut,
    ScopeValue,
    SessionOut,
    StatusOut,
    StatusValue,
)
from domain.values import DesiredState, MessageStatus, Status
from projections.history import HistoryEntry
from projections.keys import KeyRow
from projections.messages import MessageRow
from projections.status import SessionRow, status_uptime

#: The reason of a queued message its session's quotas hold back.
QUOTA_REASON = "quota"


def health(row: SessionRow) -> Health:
    """``stopped`` (the operator stopped it), ``healthy`` (connected, keepalives answered),
    ``degraded`` (connected, but WhatsApp stopped answering keepalives, or nothing was heard
    for the silence watchdog's period: see `health_reason`), ``starting`` (connecting:
    waiting for a scan, a resume or a retry), ``unhealthy`` (disconnected or expired while it
    is meant to be running; `reason` says why, `nextRetryAt` when the service tries again, if
    it does)."""
    if row.desired == DesiredState.STOPPED:
        return "stopped"
    if row.status == Status.CONNECTED:
        return "degraded" if row.degraded or row.silent_since is not None else "healthy"
    if row.status == Status.CONNECTING:
        return "starting"
    return "unhealthy"


def health_reason(row: SessionRow) -> HealthReason | None:
    """Why a connected session is degraded (None: it is not)."""
    if row.desired == DesiredState.STOPPED or row.status != Status.CONNECTED:
        return None
    if row.degraded:
        return "keepalive_failing"
    return "silent" if row.silent_since is not None else None


def rate_limit(row: SessionRow, default: int) -> RateLimitOut:
    if row.requests_per_minute is None:
        return RateLimitOut(requests_per_minute=default, is_default=True)
    return RateLimitOut(requests_per_minute=row.requests_per_minute, is_default=False)


def restriction_out(row: SessionRow) -> RestrictionOut | None:
    """The session's restriction, or None (the common case: no object is built)."""
    if row.restriction_kind is None:
        return None
    return RestrictionOut(
        kind=row.restriction_kind,  # type: ignore[arg-type]
        until=row.restriction_until,
        detail=row.restriction_detail,
        since=row.restricted_at,
    )


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
        restriction=restriction_out(row),
        health_reason=health_reason(row),
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
        restriction=restriction_out(row),
        health_reason=health_reason(row),
        last_heard_at=row.heard_at,
        silent_since=row.silent_since if health_reason(row) == "silent" else None,
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


def key_out(row: KeyRow, now: datetime) -> KeyOut:
    """A key as listed at `now` (active: neither revoked nor past its expiry then)."""
    return KeyOut.of(
        row,
        active=row.is_usable_at(now),
        scopes=cast("list[ScopeValue] | None", row.scopes),
        expired=row.expires_at is not None and row.expires_at <= now,
    )


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


def message_out(
    row: MessageRow,
    text: str | None,
    session: SessionRow | None = None,
    holds: Mapping[str, datetime] | None = None,
) -> MessageOut:
    """The message; a queued one of a restricted `session` carries the restriction, and
    its kind as the reason it waits; one its session's quotas hold back (`holds`: message
    id -> when they let it go) says when, with the reason ``quota``."""
    queued = row.status == MessageStatus.QUEUED
    held = restriction_out(session) if session is not None and queued else None
    next_attempt_at = (holds or {}).get(row.message_id) if queued else None
    reason = held.kind if held is not None else QUOTA_REASON if next_attempt_at else row.reason
    return MessageOut.of(
        row, text=text, reason=reason, restriction=held, next_attempt_at=next_attempt_at
    )
