"""Drains each session's queue of outbound messages, in order, paced, while it is connected
and not restricted (`domain.policy.RestrictionPolicy`: a restricted session's queue is paused,
nothing sent and nothing failed, until the restriction is lifted and the session connects).

A ``send`` deadline (set by the gateway projection when a message is queued, and when a
session with messages waiting connects) asks the worker that holds the session to drain it.
The drain sends one message per step, at least `interval` seconds apart per session, from
the session's recorded queue (never from a view, which may lag), and records each outcome:
sent (WhatsApp's id is recorded, ``MessageSent``), or what `domain.policy.SendPolicy` decides
for a failure (stop until connected, try again later, or fail the message and go on). An
error of the service itself (the database, a conflict): the step is tried again after a
pause, however long it takes; the drain never goes idle with messages waiting.

Sending is at least once: a worker that dies after WhatsApp took a message but before
``MessageSent`` was recorded leaves it queued, and the next worker sends it again (a worker
that lives on records it on its next step instead of sending it again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from application.errors import NotConnected, RecipientRejected, SessionNotFound
from application.ports import WhatsAppGateway
from application.sessions import SessionsApplication
from domain.outbox import QueuedMessage
from domain.policy import RestrictionPolicy, SendFailure, SendPolicy
from domain.values import FailureReason
from infra.runtime.timers import TimerThread

log = logging.getLogger(__name__)


class MessageSender:
    def __init__(
        self,
        app: SessionsApplication,
        gateway: WhatsAppGateway,
        holds: Callable[[UUID], bool],
        *,
        interval: float = 1.0,
        policy: SendPolicy | None = None,
        workers: int = 16,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.holds = holds
        self.interval = interval
        self.policy = policy or SendPolicy()
        self.restrictions = RestrictionPolicy()
        self._timers = TimerThread("sender", workers)
        self._lock = threading.Lock()
        self._active: set[UUID] = set()  # a drain is scheduled or running
        self._again: set[UUID] = set()  # kicked while active: look once more before idling
        self._last_sent: dict[UUID, float] = {}
        self._failures: dict[str, int] = {}  # message id -> failed tries in a row
        self._errors: dict[UUID, int] = {}  # session -> failed steps in a row (our own errors)
        # Sent, but recording it failed: recorded on the next step instead of sent again.
        self._unrecorded: dict[str, str] = {}  # message id -> WhatsApp's id

    def kick(self, session_id: UUID) -> None:
        """Drain the session's queue (soon, keeping its pace); a no-op if already draining."""
        with self._lock:
            if session_id in self._active:
                self._again.add(session_id)
                return
            self._active.add(session_id)
        self._timers.call_later(self._pause(session_id), lambda: self._step(session_id))

    def draining(self) -> set[UUID]:
        with self._lock:
            return set(self._active)

    def close(self) -> None:
        self._timers.stop()

    def _pause(self, session_id: UUID, extra: float = 0.0) -> float:
        last = self._last_sent.get(session_id)
        wait = 0.0 if last is None else last + self.interval - time.monotonic()
        return max(wait, extra, 0.0)

    def _step(self, session_id: UUID) -> None:
        delay: float | None
        try:
            delay = self._send_next(session_id)
            self._errors.pop(session_id, None)
        except Exception:
            errors = self._errors.get(session_id, 0) + 1
            self._errors[session_id] = errors
            delay = self.policy.pause(errors)
            log.exception("draining the queue of %s failed; again in %.0f s", session_id, delay)
        if delay is not None:
            self._timers.call_later(delay, lambda: self._step(session_id))
            return
        with self._lock:
            if session_id in self._again:  # kicked meanwhile: look again before idling
                self._again.discard(session_id)
                again = True
            else:
                self._active.discard(session_id)
                again = False
        if again:
            self._timers.call_later(self._pause(session_id), lambda: self._step(session_id))

    def _send_next(self, session_id: UUID) -> float | None:
        """Send the next message; the pause before the following step, or None when done."""
        if not self.holds(session_id):
            return None
        try:
            session = self.app.load(session_id)
        except SessionNotFound:
            return None
        message = session.next_message()
        if message is None or session.is_deleted:
            return None
        if not self.restrictions.may_send(session.status, session.restriction, _now()):
            return None  # paused or not connected: the next connection starts it again
        whatsapp_id = self._unrecorded.get(message.message_id)
        if whatsapp_id is None:
            return self._send(session_id, message)
        # WhatsApp took it, but recording that failed: record it now, do not send it again.
        self.app.record_sent(session_id, message.message_id, whatsapp_id)
        self._unrecorded.pop(message.message_id, None)
        return self._pause(session_id)

    def _send(self, session_id: UUID, message: QueuedMessage) -> float | None:
        """Send `message` and record the outcome; the pause before the next step, or None
        when the session cannot send now."""
        text = self.app.queued_text(session_id, message.version)
        try:
            sent = self.gateway.send_text(session_id, message.to, text)
        except Exception as error:
            failure = (
                SendFailure.NOT_CONNECTED
                if isinstance(error, NotConnected)
                else SendFailure.REJECTED
                if isinstance(error, RecipientRejected)
                else SendFailure.TRANSIENT
            )
            tries = self._failures.get(message.message_id, 0) + 1
            verdict = self.policy.after(failure, tries)
            if verdict.wait_for_connection:
                return None
            if verdict.retry_in is not None:
                log.warning("sending %s failed (try %d): %s", message.message_id, tries, error)
                self._failures[message.message_id] = tries
                return verdict.retry_in
            assert verdict.fail is not None
            self._fail(session_id, message.message_id, verdict.fail, str(error))
        else:
            self._failures.pop(message.message_id, None)
            self._last_sent[session_id] = time.monotonic()
            self._unrecorded[message.message_id] = sent.message_id
            self.app.record_sent(session_id, message.message_id, sent.message_id)
            self._unrecorded.pop(message.message_id, None)
        return self._pause(session_id)

    def _fail(self, session_id: UUID, message_id: str, reason: FailureReason, detail: str) -> None:
        self._failures.pop(message_id, None)
        self.app.record_send_failed(session_id, message_id, reason.value, detail)


def _now() -> datetime:
    return datetime.now(UTC)
