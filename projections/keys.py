"""The API-key projection: which key hash belongs to which session, and whether it is revoked."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from domain.session import Session
from domain.values import public_session_id


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
    #: What the key may do (`domain.access.Scope` values); None: full access.
    scopes: list[str] | None = None
    #: When it stops working (None: never), and when that was recorded (`ApiKeyExpired`).
    expires_at: datetime | None = None
    expired_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        """Neither revoked nor recorded as expired (see `is_usable_at` for the time)."""
        return self.revoked_at is None and self.expired_at is None

    def is_usable_at(self, now: datetime) -> bool:
        """Active, and not past its expiry at `now`: a key check compares the time itself,
        so an expired key is refused from its expiry on, recorded or not."""
        return self.is_active and (self.expires_at is None or now < self.expires_at)


class ApiKeyView(TrackingRecorder, ABC):
    """Every API key of every session, keyed by key id."""

    @abstractmethod
    def get_key(self, key_id: str) -> KeyRow | None:
        """The row of that key."""

    @abstractmethod
    def save_keys(self, rows: Iterable[KeyRow], tracking: Tracking) -> None:
        """Write the rows and the tracking record in one transaction."""

    @abstractmethod
    def all_keys(self) -> list[KeyRow]:
        """Every key row, revoked ones included."""


class MemoryApiKeyView(POPOTrackingRecorder, ApiKeyView):
    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, KeyRow] = {}
        self._rows_lock = threading.Lock()

    def get_key(self, key_id: str) -> KeyRow | None:
        return self._rows.get(key_id)

    def save_keys(self, rows: Iterable[KeyRow], tracking: Tracking) -> None:
        with self._rows_lock:
            self.insert_tracking(tracking)
            for row in rows:
                self._rows[row.key_id] = row

    def all_keys(self) -> list[KeyRow]:
        return list(self._rows.values())


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
            scopes=event.scopes,
            expires_at=event.expires_at,
        )
        self.view.save_keys([row], tracking)

    @process_event.register
    def _expired(self, event: Session.ApiKeyExpired, tracking: Tracking) -> None:
        row = self.view.get_key(event.key_id)
        rows = []
        if row is not None:
            rows.append(
                msgspec.structs.replace(
                    row, expired_at=event.timestamp, position=tracking.notification_id
                )
            )
        self.view.save_keys(rows, tracking)

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
