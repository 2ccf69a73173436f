"""Drains each session's queue of outbound messages, in order, paced, while it is connected
and not restricted (`domain.policy.RestrictionPolicy`: a restricted session's queue is paused,
nothing sent and nothing failed, until the restriction is lifted and the session connects).

A ``send`` deadline (set by the gateway projection when a message is queued, and when a
session with messages waiting connects) asks the worker that holds the session to drain it.
The drain sends one message per step from the session's recorded queue (never from a view,
which may lag), when `domain.policy.PacePolicy` allows it: the session's interval plus a
jitter drawn for each gap after its last recorded send, and its hour and day quotas counted
from its recorded sends (so both hold across restarts and takeovers); with "typing" on, the
recipient sees "typing…" for a while first. It records each outcome:
sent (WhatsApp's id is recorded, ``MessageSent``), or what `domain.policy.SendPolicy` decides
for a failure (stop until connected, try again later, or fail the message and go on). An
error of the service itself (the database, a conflict): the step is tried again after a
pause, however long it takes; the drain never goes idle with messages waiting.

Sending is at least once: a worker that dies after WhatsApp took a message but before
``MessageSent`` was recorded leaves it queued, and the next worker sends it again (a worker
that lives on records it on its next step instead of sending it again).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from application.errors import NotConnected, RecipientRejected, SessionNotFound
from application.ports import WhatsAppGateway
from application.sessions import SessionsApplication
from domain.outbox import QueuedMessage
from domain.policy import PacePolicy, RestrictionPolicy, SendFailure, SendingSettings, SendPolicy
from domain.session import Session
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
        interval: float | None = None,
        policy: SendPolicy | None = None,
        workers: int = 16,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`interval`, when given, replaces the deployment's default interval
        (``app.sending_defaults``) for sessions without one of their own; `clock` is the wall
        clock the pace and the quotas are measured with (the recorded sends' times)."""
        self.app = app
        self.gateway = gateway
        self.holds = holds
        self.defaults = (
            app.sending_defaults
            if interval is None
            else dataclasses.replace(app.sending_defaults, interval=interval)
        )
        self.policy = policy or SendPolicy()
        self.pace = PacePolicy()
        self.restrictions = RestrictionPolicy()
        self._clock = clock or _now
        self._rng = rng or random.Random()  # noqa: S311 - a pace's jitter, not a secret
        self._timers = TimerThread("sender", workers)
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._scheduled: dict[UUID, int] = {}  # session -> the token of its next step
        self._running: set[UUID] = set()  # a step is running now
        self._again: set[UUID] = set()  # kicked while running: look once more before idling
        # The gap drawn after the last recorded send (its time, the gap): drawn once per send,
        # so that looking again does not draw again.
        # None for the time: the send this worker just recorded.
        self._gaps: dict[UUID, tuple[float | None, float]] = {}
        # "Typing…" shown for the next message (its id, when the text may go: monotonic).
        self._typing: dict[UUID, tuple[str, float]] = {}
        self._failures: dict[str, int] = {}  # message id -> failed tries in a row
        self._errors: dict[UUID, int] = {}  # session -> failed steps in a row (our own errors)
        # Sent, but recording it failed: recorded on the next step instead of sent again.
        self._unrecorded: dict[str, str] = {}  # message id -> WhatsApp's id

    def kick(self, session_id: UUID) -> None:
        """Look at the session's queue now (its pace and quotas still hold): a step waiting
        for later is replaced by one now, which waits again if it must; a running step looks
        once more before idling."""
        with self._lock:
            if session_id in self._running:
                self._again.add(session_id)
                return
            token = self._schedule_locked(session_id)
        self._call(0.0, session_id, token)

    def draining(self) -> set[UUID]:
        with self._lock:
            return set(self._scheduled) | self._running

    def close(self) -> None:
        self._timers.stop()

    def _schedule_locked(self, session_id: UUID) -> int:
        token = next(self._tokens)
        self._scheduled[session_id] = token
        return token

    def _call(self, delay: float, session_id: UUID, token: int) -> None:
        self._timers.call_later(delay, lambda: self._step(session_id, token))

    def _step(self, session_id: UUID, token: int) -> None:
        with self._lock:
            if self._scheduled.get(session_id) != token:
                return  # replaced by a later kick
            del self._scheduled[session_id]
            self._running.add(session_id)
        delay: float | None
        try:
            delay = self._send_next(session_id)
            self._errors.pop(session_id, None)
        except Exception:
            errors = self._errors.get(session_id, 0) + 1
            self._errors[session_id] = errors
            delay = self.policy.pause(errors)
            log.exception("draining the queue of %s failed; again in %.0f s", session_id, delay)
        with self._lock:
            self._running.discard(session_id)
            if delay is None and session_id in self._again:
                delay = 0.0  # kicked meanwhile: look again before idling
            self._again.discard(session_id)
            if delay is None:
                return
            token = self._schedule_locked(session_id)
        self._call(delay, session_id, token)

    def _send_next(self, session_id: UUID) -> float | None:
        """Send the next message if its pace and quotas allow; the pause before the next
        step, or None when there is nothing to do until the session is kicked again."""
        if not self.holds(session_id):
            return None
        try:
            session = self.app.load(session_id)
        except SessionNotFound:
            return None
        message = session.next_message()
        if message is None or session.is_deleted:
            return None
        now = self._clock()
        if not self.restrictions.may_send(session.status, session.restriction, now):
            return None  # paused or not connected: the next connection starts it again
        return self._next_of(session, message, now)

    def _next_of(self, session: Session, message: QueuedMessage, now: datetime) -> float | None:
        """Send `message`, the next of the connected `session`, once its pace, quotas and
        "typing…" allow; the pause before the next step (None: the session cannot send)."""
        session_id = session.id
        whatsapp_id = self._unrecorded.get(message.message_id)
        if whatsapp_id is not None:
            # WhatsApp took it, but recording that failed: record it now, not send it again.
            self.app.record_sent(session_id, message.message_id, whatsapp_id)
            self._unrecorded.pop(message.message_id, None)
            return 0.0
        settings = session.sending_settings(self.defaults)
        sends = session.outbox.send_log
        gap = self._gap(session_id, sends.last, settings)
        wait = (self.pace.next_send_at(settings, sends, now, gap) - now).total_seconds()
        if wait > 0:
            return wait
        if settings.typing:
            typing = self._type(session_id, message)
            if typing > 0:
                return typing
        return self._send(session_id, message, settings)

    def _gap(self, session_id: UUID, last: float | None, settings: SendingSettings) -> float:
        """The gap after the last recorded send, drawn once per send."""
        if last is None:
            return 0.0
        drawn = self._gaps.get(session_id)
        if drawn is not None and drawn[0] is None:  # drawn when this worker sent it
            drawn = (last, drawn[1])
            self._gaps[session_id] = drawn
        if drawn is None or drawn[0] != last:
            drawn = (last, self.pace.gap(settings, self._rng))
            self._gaps[session_id] = drawn
        return drawn[1]

    def _type(self, session_id: UUID, message: QueuedMessage) -> float:
        """Show "typing…" to the recipient before `message`: seconds left to show it (0: the
        text may go now, "typing" ended). A presence that fails is logged, never holds the
        message."""
        shown = self._typing.get(session_id)
        if shown is None or shown[0] != message.message_id:
            text = self.app.queued_text(session_id, message.version)
            seconds = self.pace.typing_seconds(text)
            self._presence(session_id, message.to, composing=True)
            self._typing[session_id] = (message.message_id, time.monotonic() + seconds)
            return seconds
        left = shown[1] - time.monotonic()
        if left > 0:
            return left
        self._presence(session_id, message.to, composing=False)
        return 0.0

    def _presence(self, session_id: UUID, to: str, *, composing: bool) -> None:
        try:
            self.gateway.send_chat_presence(session_id, to, composing=composing)
        except Exception as error:
            log.warning("could not show typing to a recipient of %s: %s", session_id, error)

    def _send(
        self, session_id: UUID, message: QueuedMessage, settings: SendingSettings
    ) -> float | None:
        """Send `message` and record the outcome; the pause before the next step (after a
        send, the gap drawn for it: the next step then finds the pace kept without waiting
        again), or None when the session cannot send now."""
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
            self._typing.pop(session_id, None)
            self._unrecorded[message.message_id] = sent.message_id
            self.app.record_sent(session_id, message.message_id, sent.message_id)
            self._unrecorded.pop(message.message_id, None)
            gap = self.pace.gap(settings, self._rng)
            self._gaps[session_id] = (None, gap)
            return gap  # counted from now, after the send was recorded
        return 0.0

    def _fail(self, session_id: UUID, message_id: str, reason: FailureReason, detail: str) -> None:
        self._failures.pop(message_id, None)
        self.app.record_send_failed(session_id, message_id, reason.value, detail)


def _now() -> datetime:
    return datetime.now(UTC)
