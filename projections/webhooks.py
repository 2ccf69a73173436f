"""Webhooks: what each recorded event is as a webhook (type and data), and the projection
that keeps the endpoints and enqueues one delivery per (endpoint, event) with its tracking
record, so each is enqueued exactly once.

The projection starts delivering at the head of the log as it was when it was first set up
(`start_position`): history is never sent by accident. It still reads the whole log, to know
every endpoint. Payloads are built when delivered, from the event itself (texts are never
copied out of the events, so the cipher covers them).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Notification, Tracking, TrackingRecorder
from eventsourcing.projection import Projection

from domain.alerts import AlertRule, public_rule_id
from domain.session import Session
from domain.values import public_session_id
from domain.webhook import WebhookEndpoint, public_webhook_id


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_event(event: Any) -> tuple[str, dict[str, Any]] | None:  # noqa: PLR0911, PLR0912
    """The webhook type and data of a recorded event, or None if it is not one. Never a key,
    a key hash, a secret or a QR code."""
    if isinstance(event, AlertRule.Fired | AlertRule.Resolved):
        return alert_event(event)
    if not isinstance(event, Session.Event):
        return None
    data: dict[str, Any] = {"sessionId": public_session_id(event.originator_id)}
    match event:
        case Session.Created():
            data |= {"name": event.name, "labels": dict(event.labels)}
            return "session.created", data
        case Session.QRIssued():
            data |= {
                "attempt": event.attempt,
                "maxAttempts": event.max_attempts,
                "expiresAt": _iso(event.expires_at),
            }
            return "session.qr", data
        case Session.Connected():
            data |= {"jid": event.jid, "pushName": event.push_name}
            return "session.socket-connected", data
        case Session.Disconnected():
            data |= {
                "reason": event.reason,
                "detail": event.detail or None,
                "retryAttempt": event.attempt,
                "nextRetryAt": _iso(event.next_retry_at),
            }
            return "session.socket-disconnected", data
        case Session.QRExpired():
            return "session.expired", data | {"reason": "qr_expired"}
        case Session.SessionExported():  # stopped here for good: it runs elsewhere now
            return "session.stopped", data | {"reason": "exported"}
        case Session.Stopped():
            return "session.stopped", data
        case Session.Deleted():
            return "session.deleted", data
        case Session.Restricted():
            data |= {
                "kind": event.kind,
                "until": _iso(event.until),
                "detail": event.detail or None,
            }
            return "session.restricted", data
        case Session.RestrictionLifted():
            return "session.restriction-lifted", data | {"kind": event.kind, "cause": event.cause}
        case Session.Silenced():
            data |= {"health": "degraded", "reason": "silent", "lastHeardAt": _iso(event.heard_at)}
            return "session.health-changed", data
        case Session.SilenceEnded():
            data |= {"health": "healthy", "reason": None, "cause": event.cause}
            return "session.health-changed", data
        case Session.KeepAliveLost():
            return "session.health-changed", data | {
                "health": "degraded",
                "reason": "keepalive_failing",
            }
        case Session.KeepAliveRestored():
            data |= {"health": "healthy", "reason": None, "cause": "keepalive_restored"}
            return "session.health-changed", data
        case Session.MessageReceived():
            data |= {
                "messageId": event.message_id,
                "whatsappId": event.whatsapp_id,
                "from": event.sender,
                "chat": event.chat,
                "pushName": event.push_name or None,
                "text": event.text,
                "sentAt": _iso(event.sent_at),
            }
            return "message.received", data
        case Session.MessageSent():
            data |= {"messageId": event.message_id, "whatsappId": event.whatsapp_id}
            return "message.sent", data
        case Session.MessageDelivered():
            return "message.delivered", data | {"messageId": event.message_id}
        case Session.MessageRead():
            return "message.read", data | {"messageId": event.message_id}
        case Session.MessageFailed():
            data |= {
                "messageId": event.message_id,
                "reason": event.reason,
                "detail": event.detail or None,
            }
            return "message.failed", data
    return None


def alert_event(event: AlertRule.Fired | AlertRule.Resolved) -> tuple[str, dict[str, Any]]:
    """``alert.firing`` / ``alert.resolved``: the rule, the session (None for an alert about a
    deployment's webhook endpoint), the condition, what was observed and the threshold."""
    data: dict[str, Any] = {
        "sessionId": event.session_id,
        "ruleId": public_rule_id(event.originator_id),
        "subject": event.subject,
        "condition": event.condition,
        "value": event.value,
        "threshold": event.threshold,
    }
    if isinstance(event, AlertRule.Fired):
        return "alert.firing", data | {"detail": event.detail or None, "firedAt": _iso(event.at)}
    data |= {"firedAt": _iso(event.fired_at), "resolvedAt": _iso(event.timestamp)}
    return "alert.resolved", data | {"cause": event.cause}


def webhook_body(event: Any) -> dict[str, Any] | None:
    """The body sent for `event`: ``{"type", "timestamp", "data"}``."""
    found = webhook_event(event)
    if found is None:
        return None
    kind, data = found
    return {"type": kind, "timestamp": _iso(event.timestamp), "data": data}


@dataclass(frozen=True)
class EndpointRow:
    webhook_id: str
    url: str
    events: list[str]
    session_id: str | None
    enabled: bool
    version: int  # of the endpoint aggregate (the dispatcher reloads its secret on change)
    created_at: datetime
    updated_at: datetime
    disabled_reason: str | None = None


@dataclass(frozen=True)
class NewDelivery:
    webhook_id: str  # the endpoint
    event_id: str  # Standard Webhooks' webhook-id: the same for every try and replay
    event_type: str
    session_id: str
    position: int  # the event's position in the log, from which the body is built
    occurred_at: datetime


def event_id(position: int) -> str:
    return f"evt_{position}"


class WebhookView(TrackingRecorder, ABC):
    @abstractmethod
    def start_position(self) -> int:
        """Events at or before this position are never delivered (the projection's start)."""

    @abstractmethod
    def save_endpoint(self, row: EndpointRow, tracking: Tracking) -> None:
        """Insert or replace the endpoint row, with the tracking record."""

    @abstractmethod
    def remove_endpoint(self, webhook_id: str, tracking: Tracking) -> None:
        """Remove the endpoint and cancel its pending deliveries, with the tracking record."""

    @abstractmethod
    def endpoints(self) -> list[EndpointRow]:
        """Every endpoint row."""

    @abstractmethod
    def enqueue(self, deliveries: list[NewDelivery], tracking: Tracking) -> None:
        """Insert the deliveries (due now), with the tracking record."""


class WebhookProjection(Projection[WebhookView]):
    name = "webhooks"

    def __init__(self, view: WebhookView) -> None:
        super().__init__(view)
        self._endpoints: dict[str, EndpointRow] | None = None

    def _known(self) -> dict[str, EndpointRow]:
        if self._endpoints is None:
            self._endpoints = {row.webhook_id: row for row in self.view.endpoints()}
        return self._endpoints

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        found = webhook_event(domain_event)
        if found is None or tracking.notification_id <= self.view.start_position():
            self.view.insert_tracking(tracking)
            return
        kind, data = found
        session_id = data["sessionId"]  # None: a deployment's alert (global endpoints only)
        deliveries = [
            NewDelivery(
                webhook_id=row.webhook_id,
                event_id=event_id(tracking.notification_id),
                event_type=kind,
                session_id=session_id or "",
                position=tracking.notification_id,
                occurred_at=domain_event.timestamp,
            )
            for row in self._known().values()
            if row.enabled
            and kind in row.events
            and (row.session_id is None or row.session_id == session_id)
        ]
        if deliveries:
            self.view.enqueue(deliveries, tracking)
        else:
            self.view.insert_tracking(tracking)

    @process_event.register
    def _registered(self, event: WebhookEndpoint.Registered, tracking: Tracking) -> None:
        row = EndpointRow(
            webhook_id=public_webhook_id(event.originator_id),
            url=event.url,
            events=list(event.events),
            session_id=event.session_id,
            enabled=True,
            version=event.originator_version,
            created_at=event.timestamp,
            updated_at=event.timestamp,
        )
        self._save(row, tracking)

    @process_event.register
    def _changed(self, event: WebhookEndpoint.Changed, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            url=event.url,
            events=list(event.events),
            enabled=event.enabled,
            disabled_reason=None if event.enabled else "disabled by an operator",
        )

    @process_event.register
    def _rotated(self, event: WebhookEndpoint.SecretRotated, tracking: Tracking) -> None:
        self._update(event, tracking)

    @process_event.register
    def _disabled(self, event: WebhookEndpoint.Disabled, tracking: Tracking) -> None:
        self._update(event, tracking, enabled=False, disabled_reason=event.reason)

    @process_event.register
    def _deleted(self, event: WebhookEndpoint.Deleted, tracking: Tracking) -> None:
        webhook_id = public_webhook_id(event.originator_id)
        self._known().pop(webhook_id, None)
        self.view.remove_endpoint(webhook_id, tracking)

    def _update(self, event: Any, tracking: Tracking, **changes: Any) -> None:
        webhook_id = public_webhook_id(event.originator_id)
        row = self._known().get(webhook_id)
        if row is None:  # pragma: no cover - registered first, always
            self.view.insert_tracking(tracking)
            return
        changes.update(version=event.originator_version, updated_at=event.timestamp)
        self._save(dataclasses.replace(row, **changes), tracking)

    def _save(self, row: EndpointRow, tracking: Tracking) -> None:
        self._known()[row.webhook_id] = row
        self.view.save_endpoint(row, tracking)


@dataclass(frozen=True)
class EndpointHealth:
    """The endpoints counted for `/metrics`: enabled and disabled ones, the enabled ones whose
    last delivery failed, and since when the longest-failing of those has failed."""

    enabled: int = 0
    disabled: int = 0
    failing: int = 0
    oldest_failing_since: datetime | None = None


class WebhookQueries(ABC):
    """What the API reads and asks of the webhook tables (rows as plain dicts)."""

    @abstractmethod
    def endpoint_health(self) -> EndpointHealth:
        """Every endpoint counted in one aggregate query (for `/metrics`)."""

    @abstractmethod
    def endpoints_of(self, session_id: str | None) -> list[dict[str, Any]]:
        """Endpoints of a session (None: every endpoint)."""

    @abstractmethod
    def endpoint(self, webhook_id: str) -> dict[str, Any] | None:
        """One endpoint row."""

    @abstractmethod
    def deliveries(
        self, webhook_id: str, *, status: str | None, before: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """The endpoint's deliveries, newest first, each with its `attempt_log`."""

    @abstractmethod
    def retry(self, webhook_id: str, delivery_id: str) -> bool:
        """Send a delivery again now; False if the endpoint has no such delivery."""

    @abstractmethod
    def replay(self, deliveries: list[NewDelivery]) -> int:
        """Enqueue deliveries again with the events' own ids; how many."""

    @abstractmethod
    def position(self) -> int:
        """How far the webhook projection has got in the log."""

    @abstractmethod
    def session_notifications(
        self, session_id: UUID, after_version: int, limit: int
    ) -> list[Notification]:
        """One session's recorded events after `after_version`, in order, at most `limit`
        (never another session's)."""

    @abstractmethod
    def begin_replay(self, webhook_id: str, hold: float) -> bool:
        """Take the endpoint's replay for `hold` seconds at most; False if another replay of
        it is in flight (in any process)."""

    @abstractmethod
    def end_replay(self, webhook_id: str) -> None:
        """Let the endpoint be replayed again."""
