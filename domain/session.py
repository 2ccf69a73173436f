"""The `Session` aggregate: one WhatsApp link, its lifecycle and the API keys that reach it.

Every event has an explicit, stable topic (``sessiond:Session.<Name>``) so that moving or
renaming this module never breaks the replay of events already recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.access import check_grant, check_scopes
from domain.errors import (
    AlreadyStopped,
    CapReached,
    InvalidTransition,
    InvalidValue,
    SessionIsDeleted,
    SessionWasExported,
    UnknownApiKey,
)
from domain.outbox import Outbox, QueuedMessage, message_fingerprint
from domain.policy import (
    SENDING_FIELDS,
    Hearing,
    ReconnectPolicy,
    Restriction,
    RestrictionPolicy,
    SendingSettings,
    SendLog,
    SilenceEnd,
    SilencePolicy,
)
from domain.proxy import ProxyAddress
from domain.values import (
    MAX_REQUESTS_PER_MINUTE,
    DesiredState,
    FailureReason,
    MessageStatus,
    Reason,
    Status,
    check_recipient,
    check_text,
    key_id_of,
)


@dataclass
class ApiKey:
    """An API key of one session. Only the SHA-256 hash of the key is ever kept.

    Times (created, revoked, connected) are the timestamps of the events; the views keep
    them, so the aggregate does not copy them.
    """

    key_id: str
    prefix: str
    key_hash: str
    label: str
    revoked: bool = False
    #: What the key may do (`domain.access.Scope` values); None: everything (full access).
    scopes: list[str] | None = None
    #: When the key stops working; None: never.
    expires_at: datetime | None = None
    #: Whether its expiry is recorded (`ApiKeyExpired`); it stops working at `expires_at`
    #: whether it is recorded or not.
    expired: bool = False

    @property
    def is_active(self) -> bool:
        """Neither revoked nor recorded as expired."""
        return not self.revoked and not self.expired

    def is_usable_at(self, now: datetime) -> bool:
        """Active, and not past its expiry at `now`."""
        return self.is_active and (self.expires_at is None or now < self.expires_at)


class Session(Aggregate):
    """A named WhatsApp session that an operator links to a phone by scanning a QR code."""

    TOPIC = "sessiond:Session"
    #: 2: the outbound queue, recent messages and inbound ids are one `Outbox` (snapshots of
    #: version 1 are upcast by `upcast_v1_v2`).
    class_version = 2

    class Event(Aggregate.Event):
        TOPIC = "sessiond:Session.Event"

    class Created(Event, Aggregate.Created):
        TOPIC = "sessiond:Session.Created"
        name: str
        labels: dict[str, str]
        requests_per_minute: int | None
        actor: str

    class SessionImported(Created):
        """Created from an export file of another deployment (`sessiond session import`): it
        resumes the exported device `jid`, no scan needed. `export_id` names the file's export
        (a second import of it is refused); `source_session_id` is the session it came from.
        A subclass of `Created`: every view takes it as a creation."""

        TOPIC = "sessiond:Session.SessionImported"
        jid: str
        push_name: str
        export_id: str
        source_session_id: str
        exported_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.jid = self.jid
            aggregate.push_name = self.push_name or None
            aggregate.imported_from = self.export_id

    class QRIssued(Event):
        TOPIC = "sessiond:Session.QRIssued"
        code: str
        expires_at: datetime
        attempt: int
        max_attempts: int

    class Connected(Event):
        TOPIC = "sessiond:Session.Connected"
        jid: str
        push_name: str
        # The gateway worker whose client connected (empty in events recorded before).
        worker: str = ""

    class Disconnected(Event):
        TOPIC = "sessiond:Session.Disconnected"
        reason: str
        # Defaults keep events recorded before these fields existed readable.
        detail: str = ""
        attempt: int = 0
        next_retry_at: datetime | None = None
        worker: str = ""  # the gateway worker that recorded it (empty: before, or the API)

    class Restricted(Event):
        """WhatsApp restricts the session (see `domain.policy.RestrictionPolicy`): its
        outbound queue is paused until the restriction is lifted."""

        TOPIC = "sessiond:Session.Restricted"
        kind: str
        until: datetime | None
        detail: str

    class RestrictionLifted(Event):
        TOPIC = "sessiond:Session.RestrictionLifted"
        kind: str
        cause: str

    class ReconnectAttempted(Event):
        """The service tries again on its own (backoff, ban over, or after a restart)."""

        TOPIC = "sessiond:Session.ReconnectAttempted"
        attempt: int

    class KeepAliveLost(Event):
        TOPIC = "sessiond:Session.KeepAliveLost"

    class KeepAliveRestored(Event):
        TOPIC = "sessiond:Session.KeepAliveRestored"

    class Silenced(Event):
        """The session is connected but nothing was heard from WhatsApp since `heard_at`
        for longer than the watchdog allows (see `domain.policy.SilencePolicy`): its health
        is degraded until the silence ends."""

        TOPIC = "sessiond:Session.Silenced"
        heard_at: datetime | None

    class SilenceEnded(Event):
        TOPIC = "sessiond:Session.SilenceEnded"
        cause: str  # a `domain.policy.SilenceEnd`

    class QRExpired(Event):
        TOPIC = "sessiond:Session.QRExpired"

    class ReconnectRequested(Event):
        TOPIC = "sessiond:Session.ReconnectRequested"
        actor: str

    class Stopped(Event):
        TOPIC = "sessiond:Session.Stopped"
        actor: str

    class SessionExported(Event):
        """The session's device and settings were written to an export file to be imported on
        another deployment: it is stopped here for good, so the device never runs in two
        places (the views take it as a stop)."""

        TOPIC = "sessiond:Session.SessionExported"
        export_id: str
        exported_at: datetime
        actor: str

    class Deleted(Event):
        TOPIC = "sessiond:Session.Deleted"
        actor: str

    class KeysRevoked(Event):
        TOPIC = "sessiond:Session.KeysRevoked"
        key_ids: list[str]
        actor: str

    class ApiKeyIssued(Event):
        TOPIC = "sessiond:Session.ApiKeyIssued"
        key_id: str
        prefix: str
        key_hash: str
        label: str
        actor: str
        # Defaults keep keys issued before scopes and expiry readable: full access, forever.
        scopes: list[str] | None = None
        expires_at: datetime | None = None

    class ApiKeyExpired(Event):
        """A key's expiry came: it has been refused since `expires_at` (a key check compares
        the time itself); this records it, for the history and the key lists."""

        TOPIC = "sessiond:Session.ApiKeyExpired"
        key_id: str
        expires_at: datetime

    class ApiKeyRevoked(Event):
        TOPIC = "sessiond:Session.ApiKeyRevoked"
        key_id: str
        actor: str

    class RateLimitSet(Event):
        TOPIC = "sessiond:Session.RateLimitSet"
        requests_per_minute: int | None
        actor: str

    class MessageQueued(Event):
        TOPIC = "sessiond:Session.MessageQueued"
        message_id: str
        to: str
        text: str
        idempotency_key: str | None
        actor: str

    class MessageSent(Event):
        TOPIC = "sessiond:Session.MessageSent"
        message_id: str
        whatsapp_id: str

        def apply(self, aggregate: Any) -> None:
            # The quotas count sends by the time they were recorded: this event's own.
            aggregate.outbox.count_sent(self.timestamp.timestamp())

    class MessageDelivered(Event):
        TOPIC = "sessiond:Session.MessageDelivered"
        message_id: str
        acknowledged_at: datetime

    class MessageRead(Event):
        TOPIC = "sessiond:Session.MessageRead"
        message_id: str
        acknowledged_at: datetime

    class MessageFailed(Event):
        TOPIC = "sessiond:Session.MessageFailed"
        message_id: str
        reason: str
        detail: str

    class MessageReceived(Event):
        TOPIC = "sessiond:Session.MessageReceived"
        message_id: str
        whatsapp_id: str
        sender: str
        chat: str
        text: str
        push_name: str
        sent_at: datetime

    class ProxySet(Event):
        """The session dials WhatsApp through a proxy from its next connect. `url` is the
        address as shown (password masked); the password is its own field, which every view
        of the log redacts (and `SESSIOND_CIPHER_KEY` encrypts at rest, like every event)."""

        TOPIC = "sessiond:Session.ProxySet"
        url: str
        password: str
        actor: str

    class ProxyCleared(Event):
        TOPIC = "sessiond:Session.ProxyCleared"
        actor: str

    class SendingSet(Event):
        """The session's own sending settings (`domain.policy.SendingSettings` field names;
        a field left out follows the deployment's default; a quota of None: no quota)."""

        TOPIC = "sessiond:Session.SendingSet"
        settings: dict[str, Any]
        actor: str

    # Class-level defaults keep snapshots taken before these attributes existed loadable.
    proxy_url: str | None = None  # masked
    #: The session's own sending settings (`SendingSet`); what is not here follows the
    #: deployment's defaults. None (shared, never mutated): all of them do.
    sending: dict[str, Any] | None = None
    proxy_password: str = ""
    detail: str | None = None
    retry_attempt: int = 0
    next_retry_at: datetime | None = None
    degraded: bool = False
    restriction_kind: str | None = None
    restriction_until: datetime | None = None
    restriction_detail: str = ""
    # The silence watchdog's clock (see `hearing`).
    heard_at: datetime | None = None
    receives: bool = False
    silent_since: datetime | None = None
    RESTRICTIONS: ClassVar[RestrictionPolicy] = RestrictionPolicy()
    exported_as: str | None = None  # the export id, once exported
    exported_at: datetime | None = None
    imported_from: str | None = None  # the export id it was imported from
    #: Statuses from which an operator may ask for a new QR code.
    RECONNECTABLE: ClassVar[frozenset[Status]] = frozenset({Status.DISCONNECTED, Status.EXPIRED})

    @event(Created)
    def __init__(
        self,
        id: UUID,
        name: str,
        labels: dict[str, str],
        requests_per_minute: int | None,
        actor: str,
    ) -> None:
        self.name = name
        self.labels = dict(labels)
        self.requests_per_minute = requests_per_minute
        self.created_by = actor
        self.status: str = Status.CONNECTING.value
        self.reason: str | None = None
        self.desired: str = DesiredState.RUNNING.value
        self.jid: str | None = None
        self.push_name: str | None = None
        self.qr_code: str | None = None
        self.qr_expires_at: datetime | None = None
        self.qr_attempt = 0
        self.qr_max_attempts = 0
        self.keys: dict[str, ApiKey] = {}
        self.detail: str | None = None
        self.retry_attempt = 0
        self.next_retry_at: datetime | None = None
        self.degraded = False
        self.outbox = Outbox(sends=SendLog())

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot taken before the outbox was an entity: its three parts, apart."""
        state["outbox"] = Outbox(
            queue=state.pop("outbox"),
            recent=state.pop("recent"),
            received=state.pop("recent_inbound"),
        )

    # -- checks ---------------------------------------------------------------------------

    @property
    def is_deleted(self) -> bool:
        return self.desired == DesiredState.DELETED

    @property
    def is_stopped(self) -> bool:
        return self.desired == DesiredState.STOPPED

    def check_not_deleted(self) -> None:
        """Raise `SessionIsDeleted` if the session has been deleted."""
        if self.is_deleted:
            raise SessionIsDeleted("the session has been deleted")

    def check_running(self, what: str) -> None:
        """Raise `InvalidTransition` unless the session is meant to be running."""
        self.check_not_deleted()
        if self.desired != DesiredState.RUNNING:
            raise InvalidTransition(f"{what}: the session is stopped")

    def check_not_exported(self, what: str) -> None:
        """Raise `SessionWasExported` if the session was exported (it runs elsewhere now)."""
        if self.exported_as is not None:
            raise SessionWasExported(
                f"{what}: the session was exported (export {self.exported_as}); its device "
                "runs where the export file is imported, never here again"
            )

    def check_status(self, what: str, *allowed: Status) -> None:
        """Raise `InvalidTransition` unless the session's status is one of `allowed`."""
        if self.status not in allowed:
            raise InvalidTransition(f"{what}: the session is {self.status}")

    # -- lifecycle reported by the gateway ------------------------------------------------

    def issue_qr(self, code: str, expires_at: datetime, attempt: int, max_attempts: int) -> None:
        self.check_running("cannot show a QR code")
        self.check_status("cannot show a QR code", Status.CONNECTING)
        if not 1 <= attempt <= max_attempts:
            raise InvalidValue(f"QR attempt {attempt} is outside 1..{max_attempts}")
        self._issue_qr(code, expires_at, attempt, max_attempts)

    @event(QRIssued)
    def _issue_qr(self, code: str, expires_at: datetime, attempt: int, max_attempts: int) -> None:
        self.qr_code = code
        self.qr_expires_at = expires_at
        self.qr_attempt = attempt
        self.qr_max_attempts = max_attempts

    def connect(self, jid: str, push_name: str, worker: str = "") -> None:
        self.check_running("cannot connect")
        self.check_status("cannot connect", Status.CONNECTING, Status.DISCONNECTED)
        keeps_the_clock = SilencePolicy.keeps_the_clock(self.reason)
        self._connect(jid, push_name, worker)
        restriction = self.restriction
        if restriction is not None:
            self._lift_restriction(restriction.kind, "connected")
        if not keeps_the_clock:
            self._end_silence_for(SilenceEnd.RECONNECTED)

    @event(Connected)
    def _connect(
        self, jid: str, push_name: str, worker: str, timestamp: datetime | None = None
    ) -> None:
        # A new connection restarts the silence clock, unless it only resumed the session
        # after its worker changed (the reason of the disconnection is still the status's).
        if not SilencePolicy.keeps_the_clock(self.reason):
            self.heard_at = timestamp
        self.status = Status.CONNECTED.value
        self.reason = None
        self.jid = jid
        self.push_name = push_name
        self._clear_qr()
        self._clear_retry()

    def disconnect(
        self,
        reason: str,
        detail: str = "",
        attempt: int = 0,
        next_retry_at: datetime | None = None,
        worker: str = "",
        *,
        until: datetime | None = None,
    ) -> None:
        """The link went down or could not be made; `attempt` counts failures in a row;
        `worker` is the gateway worker that reports it; `until` is the end of a temporary
        ban (else the ban lasts until the next retry). A restricting reason records the
        restriction in the same save (none if the same one is already recorded)."""
        self.check_running("cannot disconnect")
        self.check_status("cannot disconnect", Status.CONNECTING, Status.CONNECTED)
        if not reason:
            raise InvalidValue("a disconnection needs a reason")
        if attempt < 0:
            raise InvalidValue("the attempt count cannot be negative")
        self._disconnect(reason, detail, attempt, next_retry_at, worker)
        found = self.RESTRICTIONS.restriction(reason, detail, until or next_retry_at)
        if found is not None and found != self.restriction:
            self._restrict(found.kind, found.until, found.detail)

    @event(Disconnected)
    def _disconnect(
        self,
        reason: str,
        detail: str,
        attempt: int,
        next_retry_at: datetime | None,
        worker: str,
    ) -> None:
        self.status = Status.DISCONNECTED.value
        self.reason = reason
        self.detail = detail or None
        self.retry_attempt = attempt
        self.next_retry_at = next_retry_at
        self.degraded = False
        if ReconnectPolicy.needs_new_qr(reason):
            self.jid = None  # the device is gone: the next start pairs a new one
            self.receives = False  # a new device is watched once it receives something
        self._clear_qr()

    def attempt_reconnect(self, now: datetime | None = None) -> None:
        """The service tries again after a failure (never after a stop or a delete); a ban
        over by `now` is lifted first."""
        self.check_running("cannot retry")
        self.check_status("cannot retry", Status.DISCONNECTED)
        self._lift_ended_ban(now)
        self._attempt_reconnect(self.retry_attempt)

    def _lift_ended_ban(self, now: datetime | None) -> None:
        restriction = self.restriction
        if now is not None and restriction is not None:
            cause = self.RESTRICTIONS.lifted(restriction, connected=False, now=now)
            if cause is not None:
                self._lift_restriction(restriction.kind, cause.value)

    # -- restrictions -----------------------------------------------------------------------

    @property
    def restriction(self) -> Restriction | None:
        """How WhatsApp restricts the session now, if it does."""
        if self.restriction_kind is None:
            return None
        return Restriction(self.restriction_kind, self.restriction_until, self.restriction_detail)

    def queue_paused(self, now: datetime) -> bool:
        """Whether the outbound queue is paused at `now` by a restriction."""
        return self.RESTRICTIONS.paused(self.restriction, now)

    @event(Restricted)
    def _restrict(self, kind: str, until: datetime | None, detail: str) -> None:
        self.restriction_kind = kind
        self.restriction_until = until
        self.restriction_detail = detail

    @event(RestrictionLifted)
    def _lift_restriction(self, kind: str, cause: str) -> None:
        self.restriction_kind = None
        self.restriction_until = None
        self.restriction_detail = ""

    @event(ReconnectAttempted)
    def _attempt_reconnect(self, attempt: int) -> None:
        self.status = Status.CONNECTING.value
        self.next_retry_at = None

    def lose_keepalive(self) -> bool:
        """Keepalive pings fail: a connected session is degraded. False if nothing changed."""
        self.check_running("cannot degrade")
        self.check_status("keepalive lost", Status.CONNECTED)
        if self.degraded:
            return False
        self._lose_keepalive()
        return True

    @event(KeepAliveLost)
    def _lose_keepalive(self) -> None:
        self.degraded = True
        self.silent_since = None  # degraded for a known reason; whatsmeow recycles the link

    def restore_keepalive(self) -> bool:
        """Keepalive pings work again. False if the session was not degraded."""
        self.check_running("cannot restore")
        self.check_status("keepalive restored", Status.CONNECTED)
        if not self.degraded:
            return False
        self._restore_keepalive()
        return True

    @event(KeepAliveRestored)
    def _restore_keepalive(self, timestamp: datetime | None = None) -> None:
        self.degraded = False
        self.heard_at = timestamp

    # -- the silence watchdog ---------------------------------------------------------------

    @property
    def hearing(self) -> Hearing:
        """What the silence watchdog judges the session by."""
        return Hearing(
            connected=self.status == Status.CONNECTED,
            keepalive_failing=self.degraded,
            receives=self.receives,
            heard_at=self.heard_at,
            silent_since=self.silent_since,
        )

    def fall_silent(self) -> bool:
        """Nothing was heard for too long (the policy decided it): the session is degraded.
        False (nothing recorded) if it is silent already, or degraded by its keepalives."""
        self.check_running("cannot be silent")
        self.check_status("cannot be silent", Status.CONNECTED)
        if self.silent_since is not None or self.degraded:
            return False
        self._fall_silent(self.heard_at)
        return True

    @event(Silenced)
    def _fall_silent(self, heard_at: datetime | None, timestamp: datetime | None = None) -> None:
        self.silent_since = timestamp

    def end_silence(self, cause: SilenceEnd) -> bool:
        """The silence ends for `cause`; False (nothing recorded) if the session is not silent."""
        self.check_not_deleted()
        return self._end_silence_for(cause)

    def _end_silence_for(self, cause: SilenceEnd) -> bool:
        if self.silent_since is None:
            return False
        self._end_silence(cause.value)
        return True

    @event(SilenceEnded)
    def _end_silence(self, cause: str, timestamp: datetime | None = None) -> None:
        self.silent_since = None
        self.heard_at = timestamp

    def expire_qr(self) -> None:
        self.check_running("cannot expire the QR code")
        self.check_status("cannot expire the QR code", Status.CONNECTING)
        self._expire_qr()

    @event(QRExpired)
    def _expire_qr(self) -> None:
        self.status = Status.EXPIRED.value
        self.reason = Reason.QR_EXPIRED.value
        self._clear_qr()
        self._clear_retry()

    # -- commands from operators and clients ----------------------------------------------

    def request_reconnect(self, actor: str, now: datetime | None = None) -> None:
        """An operator asks for a new start; a ban over by `now` is lifted first."""
        self.check_not_deleted()
        self.check_not_exported("cannot reconnect")
        if not self.is_stopped:
            self.check_status("cannot reconnect", *self.RECONNECTABLE)
        self._lift_ended_ban(now)
        self._request_reconnect(actor)

    @event(ReconnectRequested)
    def _request_reconnect(self, actor: str) -> None:
        self.desired = DesiredState.RUNNING.value
        self.status = Status.CONNECTING.value
        self.reason = None
        self._clear_qr()
        self._clear_retry()

    def stop(self, actor: str) -> None:
        self.check_not_deleted()
        if self.is_stopped:
            raise AlreadyStopped("the session is already stopped")
        self._stop(actor)

    @event(Stopped)
    def _stop(self, actor: str) -> None:
        self.desired = DesiredState.STOPPED.value
        self.status = Status.DISCONNECTED.value
        self.reason = Reason.STOPPED.value
        self._clear_qr()
        self._clear_retry()

    # -- moving to another deployment -------------------------------------------------------

    @classmethod
    def imported(
        cls,
        *,
        id: UUID,
        name: str,
        labels: dict[str, str],
        actor: str,
        jid: str,
        push_name: str,
        export_id: str,
        source_session_id: str,
        exported_at: datetime,
    ) -> Session:
        """A session created from an export file: it resumes device `jid` when it starts."""
        if not jid:
            raise InvalidValue("an imported session needs its device's JID")
        return cls._create(
            cls.SessionImported,
            id=id,
            name=name,
            labels=labels,
            requests_per_minute=None,
            actor=actor,
            jid=jid,
            push_name=push_name,
            export_id=export_id,
            source_session_id=source_session_id,
            exported_at=exported_at,
        )

    def export(self, export_id: str, exported_at: datetime, actor: str) -> None:
        """Stop the session for good: its device moves to another deployment with the export
        `export_id`. Messages still queued fail (``session_exported``) in the same save."""
        self.check_not_deleted()
        self.check_not_exported("cannot export")
        if not self.jid:
            raise InvalidTransition(
                f"cannot export: the session has no linked device (it is {self.status}"
                f"{', ' + self.reason if self.reason else ''}); link it first"
            )
        self._export(export_id, exported_at, actor)
        for message in list(self.outbox.queue):
            self._fail_message(message.message_id, FailureReason.SESSION_EXPORTED.value, "")

    @event(SessionExported)
    def _export(self, export_id: str, exported_at: datetime, actor: str) -> None:
        self.desired = DesiredState.STOPPED.value
        self.status = Status.DISCONNECTED.value
        self.reason = Reason.EXPORTED.value
        self.exported_as = export_id
        self.exported_at = exported_at
        self._clear_qr()
        self._clear_retry()

    def delete(self, actor: str) -> None:
        """Delete the session and, in the same save, revoke every key it still has."""
        self.check_not_deleted()
        self._delete(actor)
        active = sorted(k.key_id for k in self.keys.values() if k.is_active)
        self._revoke_keys(active, actor)
        for message in list(self.outbox.queue):
            self._fail_message(message.message_id, FailureReason.SESSION_DELETED.value, "")

    @event(Deleted)
    def _delete(self, actor: str) -> None:
        self.desired = DesiredState.DELETED.value
        self.status = Status.DISCONNECTED.value
        self.reason = Reason.DELETED.value
        self._clear_qr()
        self._clear_retry()

    @event(KeysRevoked)
    def _revoke_keys(self, key_ids: list[str], actor: str) -> None:
        for key_id in key_ids:
            self.keys[key_id].revoked = True

    def check_key_cap(self, cap: int, now: datetime) -> None:
        """Raise `CapReached` if the session already holds `cap` usable API keys at `now`."""
        active = sum(1 for key in self.keys.values() if key.is_usable_at(now))
        if active >= cap:
            raise CapReached(
                "key-cap-reached",
                f"a session holds at most {cap} active API keys (SESSIOND_MAX_KEYS_PER_SESSION); "
                "revoke one first",
            )

    def issue_key(
        self,
        key_id: str,
        prefix: str,
        key_hash: str,
        label: str,
        actor: str,
        *,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        """Issue a key with `scopes` (None: full access) until `expires_at` (None: never).

        The scopes are kept known, once each, in `domain.access.SCOPES`' order (an unknown
        one, or none, is `InvalidValue`). When `actor` is one of this session's keys, the new
        key gets no more than it holds (`ExceedsIssuer`); an expiry at or before `now` is
        `InvalidValue`."""
        self.check_not_deleted()
        if key_id in self.keys:
            raise InvalidValue(f"key id {key_id} is already used")
        if expires_at is not None and now is not None and expires_at <= now:
            raise InvalidValue(
                f"the expiry {expires_at.isoformat()} is not in the future; give a later one"
            )
        if scopes is not None:
            scopes = check_scopes(scopes)
        issuer = self.keys.get(key_id_of(actor) or "")
        if issuer is not None:
            check_grant(issuer.scopes, issuer.expires_at, scopes, expires_at)
        self._issue_key(
            key_id, prefix, key_hash, label, actor, scopes=scopes, expires_at=expires_at
        )

    @event(ApiKeyIssued)
    def _issue_key(
        self,
        key_id: str,
        prefix: str,
        key_hash: str,
        label: str,
        actor: str,
        *,
        # Defaults: events recorded before scopes and expiry are replayed without them.
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        self.keys[key_id] = ApiKey(
            key_id,
            prefix,
            key_hash,
            label,
            scopes=None if scopes is None else list(scopes),
            expires_at=expires_at,
        )

    def expire_keys(self, now: datetime) -> list[str]:
        """Record the expiry of every active key whose time has come at `now`; the ids."""
        due = sorted(
            key.key_id
            for key in self.keys.values()
            if key.is_active and key.expires_at is not None and key.expires_at <= now
        )
        for key_id in due:
            expires_at = self.keys[key_id].expires_at
            assert expires_at is not None
            self._expire_key(key_id, expires_at)
        return due

    @event(ApiKeyExpired)
    def _expire_key(self, key_id: str, expires_at: datetime) -> None:
        self.keys[key_id].expired = True

    def revoke_key(self, key_id: str, actor: str) -> bool:
        """Revoke one key; revoking a key that is already revoked changes nothing."""
        self.check_not_deleted()
        key = self.keys.get(key_id)
        if key is None:
            raise UnknownApiKey(f"the session has no key {key_id}")
        if not key.is_active:
            return False
        self._revoke_key(key_id, actor)
        return True

    @event(ApiKeyRevoked)
    def _revoke_key(self, key_id: str, actor: str) -> None:
        self.keys[key_id].revoked = True

    def set_rate_limit(self, requests_per_minute: int | None, actor: str) -> None:
        self.check_not_deleted()
        if requests_per_minute is not None and not (
            1 <= requests_per_minute <= MAX_REQUESTS_PER_MINUTE
        ):
            raise InvalidValue(f"requestsPerMinute must be between 1 and {MAX_REQUESTS_PER_MINUTE}")
        self._set_rate_limit(requests_per_minute, actor)

    @event(RateLimitSet)
    def _set_rate_limit(self, requests_per_minute: int | None, actor: str) -> None:
        self.requests_per_minute = requests_per_minute

    # -- proxy ------------------------------------------------------------------------------

    @property
    def proxy(self) -> ProxyAddress | None:
        """The proxy the session's next connect dials through, if any."""
        if self.proxy_url is None:
            return None
        return ProxyAddress.unmask(self.proxy_url, self.proxy_password)

    def set_proxy(self, proxy: ProxyAddress, actor: str) -> bool:
        """Use `proxy` from the next connect on; False (nothing recorded) if it is already."""
        self.check_not_deleted()
        if self.proxy == proxy:
            return False
        self._set_proxy(proxy.masked, proxy.password, actor)
        return True

    @event(ProxySet)
    def _set_proxy(self, url: str, password: str, actor: str) -> None:
        self.proxy_url = url
        self.proxy_password = password

    def clear_proxy(self, actor: str) -> bool:
        """Dial directly from the next connect on; False (nothing recorded) if it does."""
        self.check_not_deleted()
        if self.proxy_url is None:
            return False
        self._clear_proxy(actor)
        return True

    @event(ProxyCleared)
    def _clear_proxy(self, actor: str) -> None:
        self.proxy_url = None
        self.proxy_password = ""

    # -- sending pace and quotas -------------------------------------------------------------

    def set_sending(self, settings: dict[str, Any], actor: str) -> bool:
        """Send with these settings of its own from now on (a field left out follows the
        deployment's default); `InvalidValue` for an unknown field or a value out of bounds.
        False (nothing recorded) if they are the session's settings already."""
        self.check_not_deleted()
        unknown = sorted(set(settings) - set(SENDING_FIELDS))
        if unknown:
            raise InvalidValue(f"unknown sending settings: {', '.join(unknown)}")
        try:
            SendingSettings().overridden(settings).check()
        except ValueError as error:
            raise InvalidValue(str(error)) from None
        if settings == (self.sending or {}):
            return False
        self._set_sending(dict(settings), actor)
        return True

    @event(SendingSet)
    def _set_sending(self, settings: dict[str, Any], actor: str) -> None:
        self.sending = dict(settings)

    def sending_settings(self, defaults: SendingSettings) -> SendingSettings:
        """How the session sends: `defaults` (the deployment's) with its own settings."""
        return defaults.overridden(self.sending or {})

    # -- messages ---------------------------------------------------------------------------

    def queued_message(self, idempotency_key: str, to: str, text: str) -> str | None:
        """The message an earlier request with this idempotency key queued, if the session
        still remembers it; `IdempotencyKeyReused` if that request was for another message."""
        return self.outbox.replayed(idempotency_key, to, text)

    def queue_message(
        self, message_id: str, to: str, text: str, idempotency_key: str | None, actor: str
    ) -> None:
        """Queue a text for `to`; it is sent when the session is connected, in order."""
        self.check_not_deleted()
        self.check_not_exported("cannot queue a message")
        check_recipient(to)
        check_text(text)
        self.outbox.check_can_queue(message_id)
        self._queue_message(message_id, to, text, idempotency_key, actor)

    @event(MessageQueued)
    def _queue_message(
        self, message_id: str, to: str, text: str, idempotency_key: str | None, actor: str
    ) -> None:
        # Applied before the version moves on: this event's version is the next one.
        queued = QueuedMessage(message_id, to, self.version + 1)
        self.outbox.add(queued, message_fingerprint(to, text), idempotency_key)

    def next_message(self) -> QueuedMessage | None:
        """The message to send next, if any."""
        return self.outbox.next()

    def mark_sent(self, message_id: str, whatsapp_id: str) -> None:
        """The next message in the queue went out, with WhatsApp's id `whatsapp_id`."""
        self.check_not_deleted()
        self.outbox.check_next(message_id, "send")
        if not whatsapp_id:
            raise InvalidValue("a sent message has WhatsApp's id")
        self._mark_sent(message_id, whatsapp_id)

    @event(MessageSent)
    def _mark_sent(self, message_id: str, whatsapp_id: str) -> None:
        self.outbox.sent(message_id, whatsapp_id)

    def fail_message(self, message_id: str, reason: str, detail: str) -> None:
        """The next message in the queue cannot be sent, for `reason` (a `FailureReason`)."""
        self.check_not_deleted()
        self.outbox.check_next(message_id, "fail")
        self._fail_message(message_id, reason, detail)

    @event(MessageFailed)
    def _fail_message(self, message_id: str, reason: str, detail: str) -> None:
        self.outbox.failed(message_id)

    def remembers(self, whatsapp_id: str) -> bool:
        """Whether the session remembers a message by that WhatsApp id (sent or received)."""
        return self.outbox.remembers(whatsapp_id)

    def acknowledge(
        self,
        whatsapp_id: str,
        status: str,
        at: datetime,
        older: tuple[str, str] | None = None,
    ) -> bool:
        """The recipient's phone got (``delivered``) or opened (``read``) a sent message.

        A message the session no longer remembers is acknowledged from `older`, its
        (message id, status) as the messages view knows it. False (nothing recorded) for an
        unknown id, or an ack that adds nothing (a repeat, or delivered after read)."""
        self.check_not_deleted()
        if status not in (MessageStatus.DELIVERED, MessageStatus.READ):
            raise InvalidValue(f"an acknowledgement is delivered or read, not {status!r}")
        message = self.outbox.sent_as(whatsapp_id)
        message_id, current = (
            (message.message_id, message.status) if message is not None else older or ("", "")
        )
        if status == MessageStatus.DELIVERED and current == MessageStatus.SENT:
            self._deliver(message_id, at)
        elif status == MessageStatus.READ and current in (
            MessageStatus.SENT,
            MessageStatus.DELIVERED,
        ):
            self._read(message_id, at)
        else:
            return False
        self._end_silence_for(SilenceEnd.HEARD)
        return True

    @event(MessageDelivered)
    def _deliver(
        self, message_id: str, acknowledged_at: datetime, timestamp: datetime | None = None
    ) -> None:
        self.outbox.set_status(message_id, MessageStatus.DELIVERED)
        self._heard(timestamp)

    @event(MessageRead)
    def _read(
        self, message_id: str, acknowledged_at: datetime, timestamp: datetime | None = None
    ) -> None:
        self.outbox.set_status(message_id, MessageStatus.READ)
        self._heard(timestamp)

    def _heard(self, at: datetime | None) -> None:
        """Something came in from WhatsApp at `at` (a message, a receipt)."""
        self.heard_at = at
        self.receives = True

    def receive_message(
        self,
        *,
        message_id: str,
        whatsapp_id: str,
        sender: str,
        chat: str,
        text: str,
        push_name: str,
        sent_at: datetime,
    ) -> bool:
        """A text came in; False (nothing recorded) if this WhatsApp id was already recorded."""
        self.check_not_deleted()
        if not whatsapp_id:
            raise InvalidValue("an inbound message has WhatsApp's id")
        if self.outbox.has_received(whatsapp_id):
            return False
        self._receive(
            message_id=message_id,
            whatsapp_id=whatsapp_id,
            sender=sender,
            chat=chat,
            text=text,
            push_name=push_name[:100],
            sent_at=sent_at,
            timestamp=None,  # the event's own (eventsourcing requires keyword-only arguments)
        )
        self._end_silence_for(SilenceEnd.HEARD)
        return True

    @event(MessageReceived)
    def _receive(
        self,
        *,
        message_id: str,
        whatsapp_id: str,
        sender: str,
        chat: str,
        text: str,
        push_name: str,
        sent_at: datetime,
        timestamp: datetime | None = None,
    ) -> None:
        self.outbox.receive(whatsapp_id)
        self._heard(timestamp)

    def _clear_retry(self) -> None:
        self.detail = None
        self.retry_attempt = 0
        self.next_retry_at = None
        self.degraded = False

    def _clear_qr(self) -> None:
        self.qr_code = None
        self.qr_expires_at = None
        self.qr_attempt = 0
        self.qr_max_attempts = 0
