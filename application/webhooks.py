"""Commands on webhook endpoints: register, change, rotate the secret, disable, delete."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError

from application.errors import ApplicationError
from application.sessions import SessionsApplication
from domain.errors import InvalidValue
from domain.values import prefixed_uuid
from domain.webhook import (
    WEBHOOK_ID_PREFIX,
    WebhookEndpoint,
    check_endpoint_cap,
    check_events,
    check_url,
    public_webhook_id,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
#: How long the previous secret stays valid after a rotation, unless told otherwise.
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)


class WebhookNotFound(ApplicationError):
    code = "webhook-not-found"


@dataclass(frozen=True)
class RegisteredWebhook:
    webhook_id: str
    secret: str
    position: int


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_uuid(public_id: str) -> UUID:
    uuid = prefixed_uuid(public_id, WEBHOOK_ID_PREFIX)
    if uuid is None:
        raise WebhookNotFound(f"no webhook {public_id}")
    return uuid


class Webhooks:
    """Webhook endpoints are aggregates of the same application (one log, one order)."""

    def __init__(self, app: SessionsApplication) -> None:
        self.app = app

    def load(self, webhook_id: str | UUID) -> WebhookEndpoint:
        """The endpoint (not deleted); `WebhookNotFound` otherwise."""
        uuid = webhook_id if isinstance(webhook_id, UUID) else webhook_uuid(webhook_id)
        try:
            endpoint: Any = self.app.repository.get(uuid)
        except AggregateNotFoundError:
            raise WebhookNotFound(f"no webhook {webhook_id}") from None
        if not isinstance(endpoint, WebhookEndpoint) or endpoint.deleted:
            raise WebhookNotFound(f"no webhook {webhook_id}")
        return endpoint

    def register(
        self,
        url: str,
        events: list[str],
        session_id: str | None,
        actor: str,
        existing: int = 0,
    ) -> RegisteredWebhook:
        """Register an endpoint; a session's own (`session_id`) that already holds `existing`
        endpoints may not go past its cap (`CapReached`)."""
        check_url(url)
        if session_id is not None:
            check_endpoint_cap(existing, self.app.caps.webhooks)
        secret = new_secret()
        endpoint = WebhookEndpoint(
            id=uuid4(),
            url=url,
            events=check_events(events),
            session_id=session_id,
            secret=secret,
            actor=actor,
        )
        position = self._save(endpoint)
        assert position is not None
        return RegisteredWebhook(public_webhook_id(endpoint.id), secret, position)

    def change(
        self,
        webhook_id: str,
        actor: str,
        url: str | None = None,
        events: list[str] | None = None,
        enabled: bool | None = None,
    ) -> int | None:
        endpoint = self.load(webhook_id)
        if url is not None:
            check_url(url)
        endpoint.change(
            url if url is not None else endpoint.url,
            events if events is not None else endpoint.events,
            enabled if enabled is not None else endpoint.enabled,
            actor,
        )
        return self._save(endpoint)

    def rotate_secret(
        self, webhook_id: str, actor: str, grace: timedelta = DEFAULT_GRACE
    ) -> tuple[str, int]:
        if not timedelta(0) <= grace <= MAX_GRACE:
            raise InvalidValue(f"the grace period is 0 to {MAX_GRACE.days} days")
        endpoint = self.load(webhook_id)
        secret = new_secret()
        endpoint.rotate_secret(secret, datetime.now(UTC) + grace, actor)
        position = self._save(endpoint)
        assert position is not None
        return secret, position

    def disable(self, webhook_id: UUID, reason: str) -> int | None:
        try:
            endpoint = self.load(webhook_id)
        except WebhookNotFound:
            return None
        endpoint.disable(reason)
        return self._save(endpoint)

    def delete(self, webhook_id: str, actor: str) -> int:
        endpoint = self.load(webhook_id)
        endpoint.delete(actor)
        position = self._save(endpoint)
        assert position is not None
        return position

    def _save(self, endpoint: WebhookEndpoint) -> int | None:
        if not endpoint.pending_events:
            return None
        recordings = self.app.save(endpoint)
        return recordings[-1].notification.id if recordings else None
