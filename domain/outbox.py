"""A session's messages: its outbound queue, the outbound messages it remembers, and the WhatsApp
ids of the texts it received lately (so one reported twice is recorded once).

`Outbox` is an entity of the `Session` aggregate: the session checks a command against it
(the `check_*` and query methods), records the event, and the event applies the change here.
Snapshots carry it whole (``sessiond_outbox``), texts excepted: they stay in their events.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from domain.errors import IdempotencyKeyReused, InvalidTransition, InvalidValue, QueueFull
from domain.policy import SendLog
from domain.values import MAX_QUEUED_MESSAGES, MessageStatus

#: Outbound messages the session remembers after they left the queue (for acknowledgements
#: and idempotency keys); older ones are looked up in the messages view.
RECENT_MESSAGES = 200
#: WhatsApp ids of the last inbound messages, so that one reported twice is recorded once.
RECENT_INBOUND = 200


@dataclass
class QueuedMessage:
    """An outbound message waiting to be sent (the queue is in order). Its text stays in
    the ``MessageQueued`` event at `version`: snapshots stay small, and texts are stored once."""

    message_id: str
    to: str
    version: int


@dataclass
class RecentMessage:
    """An outbound message the session remembers: its status, WhatsApp's id once sent, and
    the idempotency key and fingerprint of the request that queued it."""

    message_id: str
    status: str
    fingerprint: str
    idempotency_key: str | None = None
    whatsapp_id: str | None = None


def message_fingerprint(to: str, text: str) -> str:
    """What tells a retried request from a different one under the same idempotency key."""
    return hashlib.sha256(f"{to}\x00{text}".encode()).hexdigest()


@dataclass
class Outbox:
    """The queue (oldest first), the recent outbound messages by id (oldest first), the
    WhatsApp ids of the recent inbound ones (oldest first) and the sends of the last day,
    by the minute (for the quotas; see `domain.policy.PacePolicy`)."""

    queue: list[QueuedMessage] = field(default_factory=list)
    recent: dict[str, RecentMessage] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    #: None: not known (a snapshot taken before sends were counted): the application
    #: rebuilds it from the session's recorded ``MessageSent`` events when it loads it.
    sends: SendLog | None = None

    # -- queries and checks ----------------------------------------------------------------

    def next(self) -> QueuedMessage | None:
        """The message to send next, if any."""
        return self.queue[0] if self.queue else None

    def replayed(self, idempotency_key: str, to: str, text: str) -> str | None:
        """The message an earlier request with this idempotency key queued, if still
        remembered; `IdempotencyKeyReused` if that request was for another message."""
        for message in self.recent.values():
            if message.idempotency_key == idempotency_key:
                if message.fingerprint != message_fingerprint(to, text):
                    raise IdempotencyKeyReused(
                        f"the idempotency key {idempotency_key!r} was used for another message "
                        f"({message.message_id})"
                    )
                return message.message_id
        return None

    def check_can_queue(self, message_id: str) -> None:
        """The id is new and the queue has room (`InvalidValue`, `QueueFull`)."""
        if message_id in self.recent:
            raise InvalidValue(f"message id {message_id} is already used")
        if len(self.queue) >= MAX_QUEUED_MESSAGES:
            raise QueueFull(
                f"{len(self.queue)} messages are already waiting to be sent "
                f"(at most {MAX_QUEUED_MESSAGES}); try again once the session has sent some"
            )

    def check_next(self, message_id: str, what: str) -> None:
        """`message_id` is next in the queue (`InvalidTransition`)."""
        if not self.queue or self.queue[0].message_id != message_id:
            raise InvalidTransition(f"cannot {what} {message_id}: it is not next in the queue")

    def sent_as(self, whatsapp_id: str) -> RecentMessage | None:
        """The remembered outbound message WhatsApp knows by `whatsapp_id`."""
        return next((m for m in self.recent.values() if m.whatsapp_id == whatsapp_id), None)

    def has_received(self, whatsapp_id: str) -> bool:
        return whatsapp_id in self.received

    def remembers(self, whatsapp_id: str) -> bool:
        """Whether a message by that WhatsApp id is remembered (sent or received)."""
        return self.has_received(whatsapp_id) or self.sent_as(whatsapp_id) is not None

    # -- changes (applied by the session's events) -----------------------------------------

    def add(self, message: QueuedMessage, fingerprint: str, idempotency_key: str | None) -> None:
        self.queue.append(message)
        recent = self.recent
        recent[message.message_id] = RecentMessage(
            message.message_id, MessageStatus.QUEUED.value, fingerprint, idempotency_key
        )
        while len(recent) > RECENT_MESSAGES:
            oldest = next(iter(recent))
            if recent[oldest].status == MessageStatus.QUEUED:
                break  # still queued (the queue is longer than the memory): keep it
            del recent[oldest]

    def sent(self, message_id: str, whatsapp_id: str) -> None:
        self.queue.pop(0)
        message = self.recent.get(message_id)
        if message is not None:
            message.status = MessageStatus.SENT.value
            message.whatsapp_id = whatsapp_id

    def count_sent(self, at: float) -> None:
        """A message went out at `at` (epoch seconds: its ``MessageSent`` event's time)."""
        if self.sends is not None:  # else rebuilt from the events, this one included
            self.sends.add(at)

    @property
    def send_log(self) -> SendLog:
        """The sends of the last day (`sends`, which the application makes known on load)."""
        if self.sends is None:
            raise LookupError("the send log is rebuilt from the events when the session loads")
        return self.sends

    def failed(self, message_id: str) -> None:
        self.queue = [m for m in self.queue if m.message_id != message_id]
        self.set_status(message_id, MessageStatus.FAILED)

    def set_status(self, message_id: str, status: MessageStatus) -> None:
        message = self.recent.get(message_id)
        if message is not None:
            message.status = status.value

    def receive(self, whatsapp_id: str) -> None:
        self.received.append(whatsapp_id)
        del self.received[:-RECENT_INBOUND]
