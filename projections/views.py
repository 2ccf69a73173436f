"""Interfaces of the materialised views, and their in-memory implementations for tests."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable

from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder

from projections.rows import KeyRow, SessionRow


class SessionStatusView(TrackingRecorder, ABC):
    """The status of every session, keyed by public session id."""

    @abstractmethod
    def get_session(self, session_id: str) -> SessionRow | None:
        """The row of that session, deleted ones included."""

    @abstractmethod
    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        """Write the row and the tracking record in one transaction."""

    @abstractmethod
    def all_sessions(self) -> list[SessionRow]:
        """Every row, deleted ones included."""


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


class MemorySessionStatusView(POPOTrackingRecorder, SessionStatusView):
    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, SessionRow] = {}
        self._rows_lock = threading.Lock()

    def get_session(self, session_id: str) -> SessionRow | None:
        return self._rows.get(session_id)

    def save_session(self, row: SessionRow, tracking: Tracking) -> None:
        with self._rows_lock:
            self.insert_tracking(tracking)
            self._rows[row.session_id] = row

    def all_sessions(self) -> list[SessionRow]:
        return list(self._rows.values())


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
