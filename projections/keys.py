"""The API-key projection: which key hash belongs to which session, and whether it is revoked."""

from __future__ import annotations

from typing import Any

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from domain.session import Session
from domain.values import public_session_id
from projections.rows import KeyRow
from projections.views import ApiKeyView


class ApiKeyProjection(Projection[ApiKeyView]):
    """Builds one `KeyRow` per API key from the sessions' key events."""

    name = "api_keys"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    @process_event.register
    def _issued(self, event: Session.ApiKeyIssued, tracking: Tracking) -> None:
        row = KeyRow(
            key_id=event.key_id,
            session_id=public_session_id(event.originator_id),
            prefix=event.prefix,
            key_hash=event.key_hash,
            label=event.label,
            created_at=event.timestamp,
            position=tracking.notification_id,
        )
        self.view.save_keys([row], tracking)

    @process_event.register
    def _revoked(self, event: Session.ApiKeyRevoked, tracking: Tracking) -> None:
        self._revoke([event.key_id], event, tracking)

    @process_event.register
    def _all_revoked(self, event: Session.KeysRevoked, tracking: Tracking) -> None:
        self._revoke(event.key_ids, event, tracking)

    def _revoke(self, key_ids: list[str], event: Session.Event, tracking: Tracking) -> None:
        rows = []
        for key_id in key_ids:
            row = self.view.get_key(key_id)
            if row is not None:
                rows.append(
                    msgspec.structs.replace(
                        row, revoked_at=event.timestamp, position=tracking.notification_id
                    )
                )
        self.view.save_keys(rows, tracking)
