"""The messages view: one row per message, outbound and inbound, with its status and times.

Rows never hold the text: it stays in the event that carried it (``MessageQueued`` or
``MessageReceived``, at the row's `version`), encrypted at rest when a cipher key is set, and
is read from there when a message is shown.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.popo import POPOTrackingRecorder
from eventsourcing.projection import Projection

from application.ports import EarlierMessage, MessageIndex
from domain.session import Session
from domain.values import MessageStatus, public_session_id

OUTBOUND = "outbound"
INBOUND = "inbound"


class MessageRow(msgspec.Struct, kw_only=True):
    message_id: str
    session_id: str
    direction: str  # outbound | inbound
    status: str  # a `MessageStatus`
    to: str | None = None  # outbound: the recipient's JID
    sender: str | None = None  # inbound: who sent it
    chat: str | None = None  # inbound: the chat it came in (the sender, or a group)
    push_name: str | None = None  # inbound: the sender's display name
    idempotency_key: str | None = None
    whatsapp_id: str | None = None
    reason: str | None = None  # failed: a `FailureReason`
    detail: str | None = None
    created_at: datetime  # queued, or received
    sent_at: datetime | None = None  # outbound: sent; inbound: when the sender sent it
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    updated_at: datetime
    version: int  # the session's event that carries the text
    position: int  # that event's position in the log (the order of the list)


@dataclass(frozen=True)
class MessagePage:
    """A page of a session's messages: newest first, those with a position below `before`
    (None: from the newest), at most `limit`, and only of `direction` or `status` if given."""

    session_id: str
    direction: str | None = None
    status: str | None = None
    before: int | None = None
    limit: int = 50


class MessagesView(TrackingRecorder, MessageIndex, ABC):
    @abstractmethod
    def add_message(self, row: MessageRow, tracking: Tracking) -> None:
        """Insert the row, with the tracking record."""

    @abstractmethod
    def update_message(self, message_id: str, changes: dict[str, Any], tracking: Tracking) -> None:
        """Change fields of a row, with the tracking record."""

    @abstractmethod
    def get_message(self, message_id: str) -> MessageRow | None:
        """The row of that message."""

    @abstractmethod
    def list_messages(self, page: MessagePage) -> list[MessageRow]:
        """The messages `page` asks for."""

    @abstractmethod
    def find_by_idempotency_key(self, session_id: str, key: str) -> MessageRow | None:
        """The first outbound message queued with that idempotency key."""

    def earlier_message(self, session_id: UUID, idempotency_key: str) -> EarlierMessage | None:
        row = self.find_by_idempotency_key(public_session_id(session_id), idempotency_key)
        if row is None or row.to is None:
            return None
        return EarlierMessage(row.message_id, row.version, row.to, row.status, row.created_at)


class MessagesProjection(Projection[MessagesView]):
    name = "messages"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.insert_tracking(tracking)

    def _add(
        self, event: Any, tracking: Tracking, direction: str, status: MessageStatus, **fields: Any
    ) -> None:
        """Add the row of the message `event` records (its text stays in the event)."""
        row = MessageRow(
            message_id=event.message_id,
            session_id=public_session_id(event.originator_id),
            direction=direction,
            status=status.value,
            created_at=event.timestamp,
            updated_at=event.timestamp,
            version=event.originator_version,
            position=tracking.notification_id,
            **fields,
        )
        self.view.add_message(row, tracking)

    @process_event.register
    def _queued(self, event: Session.MessageQueued, tracking: Tracking) -> None:
        self._add(
            event,
            tracking,
            OUTBOUND,
            MessageStatus.QUEUED,
            to=event.to,
            idempotency_key=event.idempotency_key,
        )

    @process_event.register
    def _received(self, event: Session.MessageReceived, tracking: Tracking) -> None:
        self._add(
            event,
            tracking,
            INBOUND,
            MessageStatus.RECEIVED,
            sender=event.sender,
            chat=event.chat,
            push_name=event.push_name or None,
            whatsapp_id=event.whatsapp_id,
            sent_at=event.sent_at,
        )

    @process_event.register
    def _sent(self, event: Session.MessageSent, tracking: Tracking) -> None:
        changes = {
            "status": MessageStatus.SENT.value,
            "whatsapp_id": event.whatsapp_id,
            "sent_at": event.timestamp,
        }
        self._update(event, changes, tracking)

    @process_event.register
    def _delivered(self, event: Session.MessageDelivered, tracking: Tracking) -> None:
        # A read may come before (or without) a delivered: the status never goes back.
        changes = {"delivered_at": event.acknowledged_at, "status_unless_read": True}
        self._update(event, changes, tracking)

    @process_event.register
    def _read(self, event: Session.MessageRead, tracking: Tracking) -> None:
        changes = {"status": MessageStatus.READ.value, "read_at": event.acknowledged_at}
        self._update(event, changes, tracking)

    @process_event.register
    def _failed(self, event: Session.MessageFailed, tracking: Tracking) -> None:
        changes = {
            "status": MessageStatus.FAILED.value,
            "reason": event.reason,
            "detail": event.detail or None,
            "failed_at": event.timestamp,
        }
        self._update(event, changes, tracking)

    def _update(self, event: Any, changes: dict[str, Any], tracking: Tracking) -> None:
        changes["updated_at"] = event.timestamp
        self.view.update_message(event.message_id, changes, tracking)


def apply_changes(row: MessageRow, changes: dict[str, Any]) -> MessageRow:
    """The row with `changes` (``status_unless_read``: delivered, unless already read)."""
    changes = dict(changes)
    if changes.pop("status_unless_read", False) and row.status != MessageStatus.READ:
        changes["status"] = MessageStatus.DELIVERED.value
    return msgspec.structs.replace(row, **changes)


class MemoryMessagesView(POPOTrackingRecorder, MessagesView):
    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, MessageRow] = {}
        self._rows_lock = threading.Lock()

    def add_message(self, row: MessageRow, tracking: Tracking) -> None:
        with self._rows_lock:
            self.insert_tracking(tracking)
            self._rows[row.message_id] = row

    def update_message(self, message_id: str, changes: dict[str, Any], tracking: Tracking) -> None:
        with self._rows_lock:
            self.insert_tracking(tracking)
            row = self._rows.get(message_id)
            if row is not None:
                self._rows[message_id] = apply_changes(row, changes)

    def get_message(self, message_id: str) -> MessageRow | None:
        return self._rows.get(message_id)

    def list_messages(self, page: MessagePage) -> list[MessageRow]:
        rows = [
            r
            for r in self._rows.values()
            if r.session_id == page.session_id
            and (page.direction is None or r.direction == page.direction)
            and (page.status is None or r.status == page.status)
            and (page.before is None or r.position < page.before)
        ]
        return sorted(rows, key=lambda r: r.position, reverse=True)[: page.limit]

    def find_by_idempotency_key(self, session_id: str, key: str) -> MessageRow | None:
        rows = [
            r
            for r in self._rows.values()
            if r.session_id == session_id and r.idempotency_key == key
        ]
        return min(rows, key=lambda r: r.position) if rows else None

    def _by_whatsapp_id(
        self, session_id: UUID, whatsapp_id: str, direction: str
    ) -> MessageRow | None:
        public = public_session_id(session_id)
        return next(
            (
                r
                for r in self._rows.values()
                if r.session_id == public
                and r.whatsapp_id == whatsapp_id
                and r.direction == direction
            ),
            None,
        )

    def sent_message(self, session_id: UUID, whatsapp_id: str) -> tuple[str, str] | None:
        row = self._by_whatsapp_id(session_id, whatsapp_id, OUTBOUND)
        return None if row is None else (row.message_id, row.status)

    def received_message(self, session_id: UUID, whatsapp_id: str) -> bool:
        return self._by_whatsapp_id(session_id, whatsapp_id, INBOUND) is not None
