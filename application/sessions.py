"""`SessionsApplication`: every command loads a session, changes it and saves it.

Each command returns the notification id (position) of the last event it recorded, so callers
can wait until the read models have caught up with it (read-your-writes).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording, Transcoding

from application.cache import SessionCache
from application.commit import GroupCommitter
from application.errors import ConcurrentChange, SessionNotFound
from application.keys import SESSION_KEY_KIND, generate_key
from application.ports import InboundMessage, MessageIndex, RevocationLog
from application.revocations import REVOCATIONS, revocations_in
from application.turns import Turns
from domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    InvalidTransition,
    SessionIsDeleted,
)
from domain.outbox import Outbox, QueuedMessage, RecentMessage
from domain.policy import (
    DAY,
    SEND_BUCKET,
    Hearing,
    PacePolicy,
    QuotaState,
    ReconnectPolicy,
    SendingSettings,
    SendLog,
    SilenceEnd,
    SilencePolicy,
    SilenceStep,
)
from domain.proxy import parse_proxy_url
from domain.session import ApiKey, Session
from domain.values import (
    GATEWAY_ACTOR,
    Status,
    check_labels,
    clean_name,
    new_message_id,
    public_session_id,
    session_uuid,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Tries of a command when another process saved the session in between (its own process
#: takes turns per session, see `application.turns`).
_CONFLICT_RETRIES = 5
#: A report of the gateway is a fact about the link: it keeps trying for this long (seconds),
#: however many tries that takes, before giving up.
_REPORT_PATIENCE = 10.0
#: Events read at once when a session's send log is rebuilt from its events.
_SEND_LOG_PAGE = 500
#: The longest pause between two tries (a random pause, doubling from 2 ms, spreads them).
_MAX_CONFLICT_PAUSE = 0.1


#: Events too many to log one line each (and whose data holds message texts).
_UNLOGGED = (
    Session.MessageQueued,
    Session.MessageSent,
    Session.MessageDelivered,
    Session.MessageRead,
    Session.MessageReceived,
)


#: Events of a session's life frequent enough to be logged at DEBUG only (a QR code is
#: replaced every 20 s while a session waits for its scan).
_FREQUENT = (Session.QRIssued,)


def log_recorded(events: list[Any]) -> None:
    """One log line per recorded event of a session's life (not its messages): the session,
    the event's name and its reason (a pipeline reads them as fields of the JSON format)."""
    for event in events:
        if isinstance(event, _UNLOGGED):
            continue
        level = logging.DEBUG if isinstance(event, _FREQUENT) else logging.INFO
        if not log.isEnabledFor(level):
            continue
        name = type(event).__name__
        reason = getattr(event, "reason", None)
        session_id = public_session_id(event.originator_id)
        fields = {"sessionId": session_id, "event": name}
        if reason:
            fields["reason"] = reason
        log.log(
            level,
            "session %s: %s%s",
            session_id,
            name,
            f" ({reason})" if reason else "",
            extra=fields,
        )


def _conflict_pause(attempt: int) -> float:
    """A random pause before try `attempt` after conflicts: up to 2 ms, doubling, capped."""
    return random.uniform(0, min(_MAX_CONFLICT_PAUSE, 0.002 * 2 ** min(attempt, 16)))  # noqa: S311


class _DataclassAsDict(Transcoding):
    """Lets snapshots of sessions carry a dataclass of the domain (its fields as a dict)."""

    def __init__(self, kind: type[Any], name: str) -> None:
        self.type = kind
        self.name = name

    def encode(self, obj: Any) -> dict[str, Any]:
        return dict(obj.__dict__)

    def decode(self, data: dict[str, Any]) -> Any:
        return self.type(**data)


#: The domain's dataclasses that snapshots carry, with their stable names in stored state.
SNAPSHOT_TYPES: tuple[tuple[type[Any], str], ...] = (
    (ApiKey, "sessiond_api_key"),
    (QueuedMessage, "sessiond_queued_message"),
    (RecentMessage, "sessiond_recent_message"),
    (Outbox, "sessiond_outbox"),
    (SendLog, "sessiond_send_log"),
)


def domain_transcodings() -> list[Transcoding]:
    """The transcodings of the domain's dataclasses, for any mapper of sessiond's events."""
    return [_DataclassAsDict(kind, name) for kind, name in SNAPSHOT_TYPES]


@dataclass(frozen=True)
class SessionCaps:
    """How many of each thing one session may hold (one tenant cannot grow without bound)."""

    keys: int = 50  # active API keys
    webhooks: int = 10  # webhook endpoints scoped to the session


@dataclass(frozen=True)
class IssuedKey:
    """A key as shown once to whoever asked for it."""

    key_id: str
    key: str
    prefix: str
    label: str
    position: int
    scopes: list[str] | None = None  # None: full access
    expires_at: datetime | None = None  # None: never


@dataclass(frozen=True)
class Resume:
    """Start the session's client: resume `device_jid`, or pair anew when it is None; dial
    through `proxy` (its full URL) when the session has one."""

    device_jid: str | None
    proxy: str | None = None

    @classmethod
    def of(cls, session: Session) -> Resume:
        proxy = session.proxy
        return cls(session.jid, proxy.url if proxy is not None else None)


@dataclass(frozen=True)
class QueuedMessageResult:
    """The message a send request queued, or the one an earlier request with the same
    idempotency key queued (`replayed`, and nothing recorded: `position` is None), with its
    status as the session knows it."""

    message_id: str
    position: int | None
    replayed: bool
    status: str = "queued"
    queued_at: datetime | None = None  # when it was queued (None for a replay it remembers)
    #: The session's sending settings and quotas once the message is queued.
    sending: SendingState | None = None


@dataclass(frozen=True)
class SendingState:
    """How a session sends (`settings`: the deployment's defaults with the session's own,
    `own`: the fields it set itself), its quotas at an instant, and when each queued message
    may go as far as the quotas are concerned (`holds`: message id -> instant, only for those
    the quotas hold back)."""

    settings: SendingSettings
    own: tuple[str, ...]
    quota: QuotaState
    holds: dict[str, datetime]
    queued: int


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    first_key: IssuedKey
    position: int
    proxy: str | None = None  # masked


class SessionsApplication(Application[UUID]):
    """Records what happens to sessions and their keys."""

    name = "sessiond"
    is_snapshotting_enabled = True
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Session: 50}

    def __init__(
        self,
        env: Any = None,
        policy: ReconnectPolicy | None = None,
        caps: SessionCaps | None = None,
        sending: SendingSettings | None = None,
    ) -> None:
        super().__init__(env)
        self.policy = policy or ReconnectPolicy()
        self.caps = caps or SessionCaps()
        #: How sessions send unless they set their own (`SendingSet`): the deployment's.
        self.sending_defaults = sending or SendingSettings()
        self.pace = PacePolicy()
        self.committer = GroupCommitter(self._record_batch)
        self._cache: SessionCache[Session] = SessionCache()
        self._turns = Turns()
        #: Where messages the sessions no longer remember are looked up (the messages view).
        self.message_index: MessageIndex | None = None

    def close(self) -> None:
        self.committer.close()
        super().close()

    def _record_batch(self, batch: list[tuple[Session, list[Any]]]) -> list[Recording[UUID]]:
        """`save` for events already collected from their sessions, in one transaction."""
        processing_event = ProcessingEvent[UUID]()
        for session, events in batch:
            processing_event.events.extend(events)
            processing_event.aggregates[session.id] = session
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Every save hands the recorder the revocations among its events, so that a recorder
        that keeps them (see `application.revocations`) writes them in the same transaction."""
        revocations = revocations_in(processing_event.events)
        if revocations:
            processing_event.saved_kwargs[REVOCATIONS] = revocations
        return super()._record(processing_event)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot from the sessions just saved, in memory, instead of loading them again."""
        if self.snapshots is None:
            return
        interval = self.snapshotting_intervals[Session]
        due = {
            event.originator_id
            for event in processing_event.events
            if event.originator_version % interval == 0
        }
        snapshots = [
            Snapshot.take(aggregate)
            for aggregate_id, aggregate in processing_event.aggregates.items()
            if aggregate_id in due and isinstance(aggregate, Session)
        ]
        if snapshots:
            try:
                self.snapshots.put(snapshots)
            except Exception:  # the events are committed: a snapshot is only a shortcut
                log.exception(
                    "could not store %d snapshots; sessions load from events", len(snapshots)
                )

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for transcoding in domain_transcodings():
            transcoder.register(transcoding)

    # -- queries ----------------------------------------------------------------------

    def get_session(self, session_id: str) -> Session:
        """The session with that public id; `SessionNotFound` if unknown or deleted."""
        session = self.load(session_id)
        if session.is_deleted:
            raise SessionNotFound(f"no session {session_id}")
        return session

    def recorded_revocation(self, session_id: str, key_id: str | None = None) -> int:
        """The position to wait for before saying that a revocation already recorded is in
        force: the event that revoked `key_id` (with None: that deleted the session).

        A recorder without a revocation log (in memory) answers the head of the log, which is
        at or after it.
        """
        recorder = self.recorder
        if isinstance(recorder, RevocationLog):
            public_id = public_session_id(session_uuid(session_id))
            position = recorder.revocation_position(public_id, key_id)
            if position is not None:
                return position
        return recorder.max_notification_id() or 0

    # -- commands from operators and clients ----------------------------------------

    def create_session(
        self,
        name: str,
        labels: dict[str, str],
        requests_per_minute: int | None,
        actor: str,
        key_label: str = "default",
        *,
        proxy: str | None = None,
        sending: dict[str, Any] | None = None,
    ) -> CreatedSession:
        """Create a session; with `proxy` (a URL, `InvalidValue` if it is not one) its
        connections dial through it from the start, and with `sending` it sends with these
        settings of its own (see `Session.set_sending`), each recorded in the same save."""
        address = parse_proxy_url(proxy) if proxy is not None else None
        session = Session(
            id=uuid4(),
            name=clean_name(name),
            labels=check_labels(labels),
            requests_per_minute=None,
            actor=actor,
        )
        if requests_per_minute is not None:
            session.set_rate_limit(requests_per_minute, actor)
        if address is not None:
            session.set_proxy(address, actor)
        if sending:
            session.set_sending(sending, actor)
        new = generate_key(SESSION_KEY_KIND)
        session.issue_key(new.key_id, new.prefix, new.key_hash, key_label, actor)
        recorded = list(session.pending_events)
        position = self._save(session)
        self._cache.put(session.id, session)
        log_recorded(recorded)
        key = IssuedKey(new.key_id, new.key, new.prefix, key_label, position)
        shown = address.masked if address is not None else None
        return CreatedSession(public_session_id(session.id), key, position, shown)

    def reconnect(self, session_id: str, actor: str) -> int:
        return self._change(session_id, lambda s: s.request_reconnect(actor, datetime.now(UTC)))

    def stop(self, session_id: str, actor: str) -> int | None:
        """Stop the session; stopping a stopped session records nothing and returns None."""

        def stop(session: Session) -> None:
            if not session.is_stopped:
                session.stop(actor)

        return self._change_or_none(session_id, stop)

    def delete(self, session_id: str, actor: str) -> int:
        return self._change(session_id, lambda s: s.delete(actor))

    def export(self, session_id: str, export_id: str, exported_at: datetime, actor: str) -> int:
        """Record that the session moves to another deployment (`application.moving`): it
        stops here for good."""
        return self._change(session_id, lambda s: s.export(export_id, exported_at, actor))

    def issue_key(
        self,
        session_id: str,
        label: str,
        actor: str,
        *,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """Issue a key with `scopes` (None: full access) until `expires_at` (None: never);
        a key issuing one gives no more than it holds (`domain.access.ExceedsIssuer`)."""
        new = generate_key(SESSION_KEY_KIND)

        def issue(session: Session) -> None:
            now = datetime.now(UTC)
            session.check_key_cap(self.caps.keys, now)
            session.issue_key(
                new.key_id,
                new.prefix,
                new.key_hash,
                label,
                actor,
                scopes=scopes,
                expires_at=expires_at,
                now=now,
            )

        position = self._change(session_id, issue)
        return IssuedKey(new.key_id, new.key, new.prefix, label, position, scopes, expires_at)

    def expire_keys(self, session_id: str, now: datetime) -> int | None:
        """Record the expiry of the session's keys whose time has come at `now`; None when
        there is none (already recorded, revoked, or the session deleted)."""
        try:
            return self._change_or_none(session_id, lambda s: s.expire_keys(now) or None)
        except (SessionIsDeleted, SessionNotFound):
            return None

    def revoke_key(self, session_id: str, key_id: str, actor: str) -> int | None:
        """Revoke a key; revoking a revoked key records nothing and returns None."""
        return self._change_or_none(session_id, lambda s: s.revoke_key(key_id, actor) or None)

    def set_rate_limit(self, session_id: str, requests_per_minute: int | None, actor: str) -> int:
        return self._change(session_id, lambda s: s.set_rate_limit(requests_per_minute, actor))

    def set_proxy(self, session_id: str, url: str, actor: str) -> int | None:
        """Dial through the proxy `url` from the session's next connect (`InvalidValue` if it
        is not a proxy URL); the same proxy again records nothing and returns None."""
        address = parse_proxy_url(url)
        return self._change_or_none(session_id, lambda s: s.set_proxy(address, actor) or None)

    def clear_proxy(self, session_id: str, actor: str) -> int | None:
        """Dial directly from the session's next connect; None if it had no proxy."""
        return self._change_or_none(session_id, lambda s: s.clear_proxy(actor) or None)

    def set_sending(self, session_id: str, settings: dict[str, Any], actor: str) -> int | None:
        """Send with `settings` of the session's own from now on (a field left out follows
        the deployment's default); the same settings again record nothing and return None."""
        return self._change_or_none(session_id, lambda s: s.set_sending(settings, actor) or None)

    def sending_state(self, session: Session, now: datetime) -> SendingState:
        """How `session` sends, its quotas at `now`, and the queued messages they hold back."""
        settings = session.sending_settings(self.sending_defaults)
        log = session.outbox.send_log
        queue = session.outbox.queue
        times = self.pace.schedule(settings, log, now, len(queue))
        holds = {m.message_id: at for m, at in zip(queue, times, strict=True) if at > now}
        return SendingState(
            settings=settings,
            own=tuple(sorted(session.sending or {})),
            quota=self.pace.quota(settings, log, now),
            holds=holds,
            queued=len(queue),
        )

    def send_message(
        self,
        session_id: str,
        to: str,
        text: str,
        idempotency_key: str | None,
        actor: str,
    ) -> QueuedMessageResult:
        """Queue a text. With an idempotency key already used for this session, answer the
        message queued then instead, nothing recorded (`IdempotencyKeyReused` if it was for
        another recipient or text): the session remembers its recent messages, the messages
        view the older ones."""
        outcome: list[QueuedMessageResult] = []

        def queue(session: Session) -> None:
            outcome.clear()
            if idempotency_key is not None:
                earlier = self._earlier_message(session, idempotency_key, to, text)
                if earlier is not None:
                    state = self.sending_state(session, datetime.now(UTC))
                    outcome.append(dataclasses.replace(earlier, sending=state))
                    return
            message_id = new_message_id()
            session.queue_message(message_id, to, text, idempotency_key, actor)
            queued_at = session.pending_events[-1].timestamp
            state = self.sending_state(session, queued_at)
            outcome.append(
                QueuedMessageResult(message_id, None, False, queued_at=queued_at, sending=state)
            )

        position = self._change_or_none(session_id, queue)
        (result,) = outcome
        if result.replayed:
            return result
        return dataclasses.replace(result, position=position)

    def _earlier_message(
        self, session: Session, idempotency_key: str, to: str, text: str
    ) -> QueuedMessageResult | None:
        """The message an earlier send with this key queued, if it was the same message."""
        remembered = session.queued_message(idempotency_key, to, text)
        if remembered is not None:
            status = session.outbox.recent[remembered].status
            return QueuedMessageResult(remembered, None, True, status)
        index = self.message_index
        found = None if index is None else index.earlier_message(session.id, idempotency_key)
        if found is None:
            return None
        if found.to != to or self.queued_text(session.id, found.version) != text:
            raise IdempotencyKeyReused(
                f"the idempotency key {idempotency_key!r} was used for another message "
                f"({found.message_id})"
            )
        return QueuedMessageResult(found.message_id, None, True, found.status, found.queued_at)

    def queued_text(self, session_id: UUID, version: int) -> str:
        """The text of a queued message, from its ``MessageQueued`` event (decrypted)."""
        (queued,) = self.events.get(session_id, gt=version - 1, lte=version)
        text = getattr(queued, "text", None)
        if not isinstance(text, str):
            raise TypeError(f"event {version} of {session_id} is not a queued message")
        return text

    # -- what the gateway reports -------------------------------------------------------

    def record_sent(self, session_id: UUID, message_id: str, whatsapp_id: str) -> int | None:
        return self._gateway_change(session_id, lambda s: s.mark_sent(message_id, whatsapp_id))

    def record_send_failed(
        self, session_id: UUID, message_id: str, reason: str, detail: str
    ) -> int | None:
        return self._gateway_change(
            session_id, lambda s: s.fail_message(message_id, reason, detail[:500])
        )

    def record_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        """Record an inbound text; one already recorded (same WhatsApp id) is not again."""

        def receive(session: Session) -> None:
            index = self.message_index
            if (
                not session.remembers(message.whatsapp_id)
                and index is not None
                and index.received_message(session.id, message.whatsapp_id)
            ):
                return  # recorded long ago: WhatsApp delivered it again
            session.receive_message(
                message_id=new_message_id(),
                whatsapp_id=message.whatsapp_id,
                sender=message.sender,
                chat=message.chat,
                text=message.text,
                push_name=message.push_name,
                sent_at=message.sent_at,
            )

        return self._gateway_change(session_id, receive)

    def record_acks(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        """Record delivery or read receipts; ids the session does not know are ignored."""

        def acknowledge(session: Session) -> None:
            index = self.message_index
            for whatsapp_id in whatsapp_ids:
                older = None
                if not session.remembers(whatsapp_id) and index is not None:
                    older = index.sent_message(session.id, whatsapp_id)
                session.acknowledge(whatsapp_id, status, at, older)

        return self._gateway_change(session_id, acknowledge)

    def record_qr(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        return self._gateway_change(
            session_id, lambda s: s.issue_qr(code, expires_at, attempt, max_attempts)
        )

    def record_connected(
        self,
        session_id: UUID,
        jid: str,
        push_name: str,
        worker: str = "",
        heard: Callable[[Hearing], None] | None = None,
    ) -> int | None:
        """Record that `worker`'s client of the session connected; once recorded, `heard` is
        given the session's `Hearing` as saved (what the silence watchdog judges it by, without
        loading the session again)."""
        saved: list[Hearing] = []

        def connect(session: Session) -> None:
            session.connect(jid, push_name, worker)
            saved[:] = [session.hearing]  # the last try is the one saved

        position = self._gateway_change(session_id, connect)
        if position is not None and saved and heard is not None:
            heard(saved[-1])
        return position

    def record_disconnected(
        self,
        session_id: UUID,
        reason: str,
        detail: str = "",
        not_before: datetime | None = None,
        worker: str = "",
    ) -> int | None:
        """Record that the link went down (as `worker` reports it); the reconnect policy
        schedules the next try. A restricting reason records the restriction too (a ban
        until `not_before`), which pauses the session's outbound queue."""

        def disconnect(session: Session) -> None:
            attempt = session.retry_attempt + 1
            retry_at = self.policy.next_retry(reason, attempt, datetime.now(UTC), not_before)
            session.disconnect(reason, detail[:500], attempt, retry_at, worker, until=not_before)

        return self._gateway_change(session_id, disconnect)

    def record_qr_expired(self, session_id: UUID) -> int | None:
        return self._gateway_change(session_id, lambda s: s.expire_qr())

    def record_keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        def change(session: Session) -> None:
            if healthy:
                session.restore_keepalive()
            else:
                session.lose_keepalive()

        return self._gateway_change(session_id, change)

    # -- the silence watchdog ---------------------------------------------------------------

    def hearing(self, session_id: UUID) -> Hearing:
        """What the recorded events say of the session's link, for the silence watchdog."""
        return self.load(session_id).hearing

    def record_silent(self, session_id: UUID, policy: SilencePolicy, now: datetime) -> bool:
        """Record the session silent if `policy` finds it so at `now`, judged on its events as
        they are when saved. Whether it is silent now (recorded by this call or before), so
        that its worker checks it."""
        steps: list[SilenceStep] = []

        def silence(session: Session) -> None:
            steps[:] = [policy.judge(session.hearing, now).step]
            if steps[0] == SilenceStep.SILENCE:
                session.fall_silent()

        self._gateway_change(session_id, silence)
        return bool(steps) and steps[0] in (SilenceStep.SILENCE, SilenceStep.CHECK)

    def record_check_passed(self, session_id: UUID) -> int | None:
        """WhatsApp answered the watchdog's active check: the silence ends (``checked``)."""

        def end(session: Session) -> None:
            session.end_silence(SilenceEnd.CHECKED)

        return self._gateway_change(session_id, end)

    def retry(self, session_id: UUID) -> Resume | None:
        """Record that the service tries again and say what to start; None when a retry no
        longer applies (connected, stopped or deleted meanwhile). A ban that is over is
        lifted in the same save."""
        tried: list[Session] = []

        def attempt(session: Session) -> None:
            session.attempt_reconnect(datetime.now(UTC))
            tried.append(session)

        if self._gateway_change(session_id, attempt) is None or not tried:
            return None
        return Resume.of(tried[-1])

    def expire_stale_qr(self, session_id: UUID, now: datetime) -> int | None:
        """The safety net for a QR code whose expiry the gateway never reported."""

        def expire(session: Session) -> None:
            due = session.qr_expires_at
            if session.status == Status.CONNECTING and (due is None or due <= now):
                session.expire_qr()

        return self._gateway_change(session_id, expire)

    # -- load, change, save ---------------------------------------------------------------

    def load(self, session_id: str | UUID) -> Session:
        """The session with that id, deleted or not; `SessionNotFound` if there is none."""
        uuid = session_id if isinstance(session_id, UUID) else session_uuid(session_id)
        try:
            session: Session = self.repository.get(uuid)
        except AggregateNotFoundError:
            raise SessionNotFound(f"no session {session_id}") from None
        if session.outbox.sends is None:
            self.rebuild_send_log(session)
        return session

    def rebuild_send_log(self, session: Session, now: datetime | None = None) -> None:
        """Count the session's sends of the last day from its ``MessageSent`` events, read
        newest first a page at a time back to a day before `now` (for a session loaded from
        a snapshot taken before sends were counted; its next snapshot carries them)."""
        horizon = (now or datetime.now(UTC)).timestamp() - DAY - SEND_BUCKET
        found: list[float] = []
        below = session.version
        while below > 0:
            page: list[Any] = list(
                self.events.get(session.id, lte=below, desc=True, limit=_SEND_LOG_PAGE)
            )
            older = [e for e in page if e.timestamp.timestamp() >= horizon]
            found.extend(
                e.timestamp.timestamp() for e in older if isinstance(e, Session.MessageSent)
            )
            if len(older) < _SEND_LOG_PAGE:
                break  # the page ended, or went back past the horizon
            below = page[-1].originator_version - 1
        log = SendLog()
        for at in reversed(found):
            log.add(at)
        session.outbox.sends = log

    def _save(self, session: Session) -> int:
        return self.committer.save(session)

    def _change(self, session_id: str | UUID, change: Callable[[Session], object]) -> int:
        position = self._change_or_none(session_id, change)
        assert position is not None, "this change always records an event"
        return position

    def _change_or_none(
        self,
        session_id: str | UUID,
        change: Callable[[Session], object],
        tries: int = _CONFLICT_RETRIES,
        patience: float = 0.0,
    ) -> int | None:
        """Load, change, save; retried when another writer saved the session in between: at
        least `tries` times, and until `patience` seconds have passed.

        Commands on one session take turns in this process, so only another process's
        save can come in between. The first try may start from the cached copy (see
        `application.cache`); anything but a successful save is decided again on a fresh
        load before it is answered.
        """
        uuid = session_id if isinstance(session_id, UUID) else session_uuid(session_id)
        with self._turns.turn(uuid):
            give_up_at = time.monotonic() + patience
            for attempt in itertools.count():
                if attempt >= tries and time.monotonic() >= give_up_at:
                    break
                if attempt > 1:  # not in step with the other writer: a random pause
                    time.sleep(_conflict_pause(attempt))
                cached = self._cache.take(uuid) if attempt == 0 else None
                session = cached if cached is not None else self.load(uuid)
                try:
                    if session.is_deleted:
                        raise SessionIsDeleted(f"the session {session_id} has been deleted")
                    change(session)
                except DomainError:
                    if cached is not None:
                        continue
                    raise
                if not session.pending_events:
                    if cached is not None:
                        continue
                    return None
                recorded = list(session.pending_events)
                try:
                    position = self._save(session)
                except IntegrityError:
                    self._cache.evict(uuid)
                    continue
                self._cache.put(uuid, session)
                log_recorded(recorded)
                return position
        raise ConcurrentChange(f"session {session_id} changed concurrently; try again")

    def _gateway_change(self, session_id: UUID, change: Callable[[Session], None]) -> int | None:
        """Record what the gateway saw; a report that no longer applies is dropped and logged."""
        try:
            return self._change_or_none(session_id, change, patience=_REPORT_PATIENCE)
        except (InvalidTransition, SessionIsDeleted, SessionNotFound) as error:
            log.info("ignored a stale gateway report for %s: %s", session_id, error)
            return None
        except DomainError:
            log.exception("the gateway reported something impossible for %s", session_id)
            return None


__all__ = [
    "GATEWAY_ACTOR",
    "CreatedSession",
    "IssuedKey",
    "QueuedMessageResult",
    "Resume",
    "SessionCaps",
    "SessionsApplication",
]
