"""The `WebhookEndpoint` aggregate: where a customer wants events delivered, and with which
secret they are signed (Standard Webhooks). Global endpoints (the admin's) receive events of
every session; a session's endpoint only that session's.

Secrets live in the endpoint's events (encrypted at rest with ``SESSIOND_CIPHER_KEY``, and
redacted from every history), since signing needs them, not only their hashes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import CapReached, InvalidValue, SessionIsDeleted

#: Every event type a webhook can subscribe to.
WebhookEventType = Literal[
    "session.created",
    "session.qr",
    "session.socket-connected",
    "session.socket-disconnected",
    "session.expired",
    "session.stopped",
    "session.deleted",
    "session.restricted",
    "session.restriction-lifted",
    "session.health-changed",
    "message.received",
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "alert.firing",
    "alert.resolved",
]
EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)
WEBHOOK_ID_PREFIX = "wh_"
MAX_URL_LENGTH = 2048


def public_webhook_id(uuid: UUID) -> str:
    return WEBHOOK_ID_PREFIX + uuid.hex


def check_endpoint_cap(existing: int, cap: int) -> None:
    """Raise `CapReached` if a session that holds `existing` endpoints may not have another."""
    if existing >= cap:
        raise CapReached(
            "webhook-cap-reached",
            f"a session holds at most {cap} webhook endpoints "
            "(SESSIOND_MAX_WEBHOOKS_PER_SESSION); delete one first",
        )


def check_events(events: list[str]) -> list[str]:
    """The subscribed event types, in catalogue order; `InvalidValue` for unknown ones."""
    if not events:
        raise InvalidValue("events must name at least one event type")
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidValue(
            f"unknown event types {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}"
        )
    return [t for t in EVENT_TYPES if t in events]


class WebhookEndpoint(Aggregate):
    """A URL that receives signed events."""

    TOPIC = "sessiond:WebhookEndpoint"

    class Event(Aggregate.Event):
        TOPIC = "sessiond:WebhookEndpoint.Event"

    class Registered(Event, Aggregate.Created):
        TOPIC = "sessiond:WebhookEndpoint.Registered"
        url: str
        events: list[str]
        session_id: str | None
        secret: str
        actor: str

    class Changed(Event):
        TOPIC = "sessiond:WebhookEndpoint.Changed"
        url: str
        events: list[str]
        enabled: bool
        actor: str

    class SecretRotated(Event):
        TOPIC = "sessiond:WebhookEndpoint.SecretRotated"
        secret: str
        previous_valid_until: datetime
        actor: str

    class Disabled(Event):
        """The service stopped delivering to it (410 Gone, or failing for days)."""

        TOPIC = "sessiond:WebhookEndpoint.Disabled"
        reason: str

    class Deleted(Event):
        TOPIC = "sessiond:WebhookEndpoint.Deleted"
        actor: str

    @event(Registered)
    def __init__(  # noqa: PLR0917 - the event's fields
        self,
        id: UUID,
        url: str,
        events: list[str],
        session_id: str | None,
        secret: str,
        actor: str,
    ) -> None:
        self.url = url
        self.events = list(events)
        self.session_id = session_id
        self.secret = secret
        self.previous_secret: str | None = None
        self.previous_valid_until: datetime | None = None
        self.enabled = True
        self.disabled_reason: str | None = None
        self.deleted = False

    def check_not_deleted(self) -> None:
        if self.deleted:
            raise SessionIsDeleted("the webhook has been deleted")

    def change(self, url: str, events: list[str], enabled: bool, actor: str) -> bool:
        """Change what it receives; False (nothing recorded) when nothing changes."""
        self.check_not_deleted()
        events = check_events(events)
        if (url, events, enabled) == (self.url, self.events, self.enabled):
            return False
        self._change(url, events, enabled, actor)
        return True

    @event(Changed)
    def _change(self, url: str, events: list[str], enabled: bool, actor: str) -> None:
        self.url = url
        self.events = list(events)
        if enabled and not self.enabled:
            self.disabled_reason = None
        self.enabled = enabled

    def rotate_secret(self, secret: str, previous_valid_until: datetime, actor: str) -> None:
        self.check_not_deleted()
        self._rotate(secret, previous_valid_until, actor)

    @event(SecretRotated)
    def _rotate(self, secret: str, previous_valid_until: datetime, actor: str) -> None:
        self.previous_secret = self.secret
        self.previous_valid_until = previous_valid_until
        self.secret = secret

    def disable(self, reason: str) -> bool:
        self.check_not_deleted()
        if not self.enabled:
            return False
        self._disable(reason)
        return True

    @event(Disabled)
    def _disable(self, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason

    def delete(self, actor: str) -> None:
        self.check_not_deleted()
        self._delete(actor)

    @event(Deleted)
    def _delete(self, actor: str) -> None:
        self.deleted = True
        self.enabled = False


def check_url(url: str) -> str:
    """An http(s) URL with a host and no credentials; `InvalidValue` (saying what is wrong)
    otherwise. Whether its address may be reached is for the webhook client to say, at
    registration for an address written in the URL and on every connection for the rest
    (`infra.webhooks.client`)."""
    from urllib.parse import urlsplit  # noqa: PLC0415 - the domain's only URL need

    if len(url) > MAX_URL_LENGTH:
        raise InvalidValue(f"the URL must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as error:
        raise InvalidValue(f"the URL is not valid: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidValue("the URL must use http or https")
    if not parts.hostname:
        raise InvalidValue("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue("the URL must not contain a user name or password")
    if any(c.isspace() for c in url):
        raise InvalidValue("the URL must not contain spaces")
    return url
