"""The reconnect policy: whether, and when, a session that went down is tried again.

- The link dropped, WhatsApp (or the session's proxy) could not be reached or refused the
  connection, or the device store (its database) failed: exponential backoff with jitter, capped
  (``base · factor^(attempt-1)``, at most ``cap``, ± ``jitter``).
- A temporary ban: once the ban has ended (plus a little jitter so sessions spread out).
- Logged out, device unlinked, QR codes expired, pairing failed: never — the phone must scan a
  new QR code, which an operator asks for with a reconnect.
- Replaced by another client: never — fighting it would make the two clients take the device
  from each other in turn; the status reports it instead.
- Client outdated: never — only a new sessiond release helps.
- The service or the worker holding the session went away, or handed it over: at once
  (attempt 1 has no delay).
- The silence watchdog recycled a connection that stayed silent (``silent``): at once.

The silence watchdog (`SilencePolicy`), the send, restriction, deadline and delivery policies
follow.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from domain.values import DeadlineKind, FailureReason, Reason, Status

BACKOFF_REASONS = frozenset(
    {
        Reason.CONNECTION_LOST,
        Reason.WHATSAPP_UNREACHABLE,
        Reason.PROXY_UNREACHABLE,
        Reason.CONNECT_FAILURE,
        Reason.STORE_UNAVAILABLE,
    }
)
#: A session disconnected for one of these was fine: only its worker changed (it restarted,
#: died, or handed the session over). Its silence clock runs on through the new connection.
TAKEOVER_REASONS = frozenset({Reason.SERVICE_RESTARTED, Reason.GATEWAY_LOST, Reason.HANDED_OVER})
IMMEDIATE_REASONS = TAKEOVER_REASONS | {Reason.SILENT}
NEEDS_QR_REASONS = frozenset(
    {Reason.LOGGED_OUT, Reason.DEVICE_UNLINKED, Reason.QR_EXPIRED, Reason.PAIRING_FAILED}
)


@dataclass(frozen=True)
class ReconnectPolicy:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try number `attempt` (1 for the first retry)."""
        raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.cap, raw * (1.0 + spread)))

    def next_retry(
        self,
        reason: str,
        attempt: int,
        now: datetime,
        not_before: datetime | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after failure number `attempt` for `reason`; None: do not."""
        if reason in IMMEDIATE_REASONS:
            return now
        if reason == Reason.TEMPORARILY_BANNED:
            end = not_before or now + timedelta(seconds=self.cap)
            spread = (rng or random).uniform(0.0, self.jitter * self.base)
            return max(now, end) + timedelta(seconds=spread)
        if reason in BACKOFF_REASONS:
            return now + timedelta(seconds=self.delay(attempt, rng))
        return None

    @staticmethod
    def needs_new_qr(reason: str | None) -> bool:
        return reason in NEEDS_QR_REASONS


# -- outbound messages ------------------------------------------------------------------------


class SendFailure(StrEnum):
    """How a try to send a message failed, as far as what happens next is concerned."""

    NOT_CONNECTED = "not_connected"  # the link is down (or not up yet)
    REJECTED = "rejected"  # WhatsApp refused the recipient for good
    TRANSIENT = "transient"  # a time-out, a server error: it may work later


@dataclass(frozen=True)
class SendVerdict:
    """What to do after a failed try: stop draining (`wait_for_connection`), try the same
    message again after `retry_in` seconds, or record it failed with `fail` and go on."""

    wait_for_connection: bool = False
    retry_in: float | None = None
    fail: FailureReason | None = None


@dataclass(frozen=True)
class SendPolicy:
    """When a message that could not be sent is tried again, and when it fails.

    - not connected: nothing is spent; the drain stops, the next connection starts it again;
    - refused for good: the message fails (``rejected``) and the next one goes;
    - anything else: tried again after a growing pause (2 s, doubling up to a minute,
      whatever the pace), and failed (``send_failed``) after `attempts` tries (about two
      minutes), so that one bad message does not block the queue for ever.
    """

    attempts: int = 6
    first_pause: float = 2.0
    longest_pause: float = 60.0

    def pause(self, tries: int) -> float:
        """The pause after `tries` failures in a row: `first_pause` after the first,
        doubling, at most `longest_pause` (a failed send, or a drain step that failed on
        the service's own error)."""
        return float(min(self.longest_pause, self.first_pause * 2.0 ** max(0, tries - 1)))

    def after(self, failure: SendFailure, tries: int) -> SendVerdict:
        """The verdict after try number `tries` (1 for the first) of one message failed."""
        if failure == SendFailure.NOT_CONNECTED:
            return SendVerdict(wait_for_connection=True)
        if failure == SendFailure.REJECTED:
            return SendVerdict(fail=FailureReason.REJECTED)
        if tries < self.attempts:
            return SendVerdict(retry_in=self.pause(tries))
        return SendVerdict(fail=FailureReason.SEND_FAILED)


# -- the silence watchdog -------------------------------------------------------------------


@dataclass(frozen=True)
class Hearing:
    """What the recorded events say of a session's link, for the silence watchdog.

    `heard_at` is the last time WhatsApp was heard on it: a message received, a delivery or
    read receipt, keepalives working again, an active check answered, or a new connection
    (not one that only resumed the session after its worker changed: that keeps the clock).
    `receives` says whether anything (a message or a receipt) came in since its device was
    linked; `silent_since` when it was found silent (None: it is not).
    """

    connected: bool
    keepalive_failing: bool
    receives: bool
    heard_at: datetime | None
    silent_since: datetime | None = None


class SilenceStep(StrEnum):
    """What the watchdog does for a session now."""

    IGNORE = "ignore"  # not watched now (off, not connected, keepalives failing, never receives)
    WAIT = "wait"  # heard recently enough: look again at `look_again_at`
    SILENCE = "silence"  # silent for too long: record it (degraded), then check
    CHECK = "check"  # recorded silent, not checked yet (e.g. its worker changed): check


@dataclass(frozen=True)
class SilenceVerdict:
    step: SilenceStep
    #: When to look at the session again (None: when something changes, e.g. it connects).
    look_again_at: datetime | None = None


@dataclass(frozen=True)
class SilencePolicy:
    """When a connected session is silent, and what follows.

    - A session is watched while it is connected, its keepalives work (failing keepalives
      already make it degraded, and whatsmeow recycles that link itself), and it has received
      something (a message or a receipt) since its device was linked: one that never
      receives is never silent. `after` None (or zero) turns the watchdog off.
    - Silent: nothing heard for `after`. It is recorded (health ``degraded``, reason
      ``silent``), and the worker makes one active check, a round trip to WhatsApp of at most
      `check_timeout` seconds: answered, the silence ends (``checked``) and the clock starts
      again; not answered, the connection is recycled (disconnected ``silent``, reconnected at
      once), and the new connection ends the silence (``reconnected``).
    - A session recorded silent but not checked (its worker changed meanwhile) is checked by
      its next worker.
    """

    after: timedelta | None = timedelta(minutes=30)
    check_timeout: float = 20.0

    @property
    def enabled(self) -> bool:
        return self.after is not None and self.after > timedelta(0)

    def judge(self, hearing: Hearing, now: datetime) -> SilenceVerdict:
        """What to do at `now` for a session whose link is as `hearing` says."""
        after = self.after
        if after is None or after <= timedelta(0):
            return SilenceVerdict(SilenceStep.IGNORE)
        if not hearing.connected:
            return SilenceVerdict(SilenceStep.IGNORE)  # its next connection is looked at
        if hearing.keepalive_failing or not hearing.receives or hearing.heard_at is None:
            return SilenceVerdict(SilenceStep.IGNORE, now + after)
        if hearing.silent_since is not None:
            return SilenceVerdict(SilenceStep.CHECK)
        due = hearing.heard_at + after
        if now < due:
            return SilenceVerdict(SilenceStep.WAIT, due)
        return SilenceVerdict(SilenceStep.SILENCE)

    @staticmethod
    def keeps_the_clock(previous_reason: str | None) -> bool:
        """Whether a connection made after a disconnection for `previous_reason` keeps the
        silence clock running (the session only changed workers) rather than restarting it."""
        return previous_reason in TAKEOVER_REASONS

    @staticmethod
    def recycles(check_passed: bool) -> Reason | None:
        """Why the connection is recycled after the active check, or None: it answered."""
        return None if check_passed else Reason.SILENT


class SilenceEnd(StrEnum):
    """Why a silence ended."""

    HEARD = "heard"  # a message or a receipt came in
    CHECKED = "checked"  # the active check was answered
    RECONNECTED = "reconnected"  # a new connection (the recycled one, or an operator's)


# -- restrictions -----------------------------------------------------------------------------

#: Why WhatsApp may stop a session in a way that holds its outbound queue: a temporary ban
#: (until a known end), or something only a person can undo (scan a new QR code after a
#: logout or a lost device, close the other client, upgrade sessiond).
RESTRICTING_REASONS = frozenset(
    {
        Reason.TEMPORARILY_BANNED,
        Reason.LOGGED_OUT,
        Reason.DEVICE_UNLINKED,
        Reason.STREAM_REPLACED,
        Reason.CLIENT_OUTDATED,
    }
)


class LiftCause(StrEnum):
    """Why a restriction ended."""

    CONNECTED = "connected"  # the session connected again: WhatsApp takes it back
    BAN_ENDED = "ban_ended"  # the ban's end passed; the service tries again


@dataclass(frozen=True)
class Restriction:
    """WhatsApp restricts the session: `kind` is the reason that restricted it, `until` the
    end of a temporary ban (None: until a person acts), `detail` what WhatsApp said."""

    kind: str
    until: datetime | None = None
    detail: str = ""


@dataclass(frozen=True)
class RestrictionPolicy:
    """Whether a disconnection restricts a session, whether its outbound queue is paused,
    and when the restriction ends.

    - a temporary ban restricts until its end (``until``); the other restricting reasons
      until the session connects again (after a person acted: a new scan, a reconnect);
    - while restricted the queue is paused: nothing is sent, nothing is failed or dropped;
      messages stay queued and wait;
    - the restriction is lifted when the session connects, or, for a ban, when the service
      tries again after the ban's end (``ban_ended``);
    - a message goes out only when the session is connected and not paused.
    """

    def restriction(
        self, reason: str, detail: str = "", until: datetime | None = None
    ) -> Restriction | None:
        """The restriction a disconnection for `reason` brings, or None if it brings none;
        `until` is the ban's end (ignored for the other reasons)."""
        if reason not in RESTRICTING_REASONS:
            return None
        ends = until if reason == Reason.TEMPORARILY_BANNED else None
        return Restriction(reason, ends, detail)

    def paused(self, restriction: Restriction | None, now: datetime) -> bool:
        """Whether the outbound queue is paused at `now` by `restriction`."""
        if restriction is None:
            return False
        return restriction.until is None or now < restriction.until

    def lifted(
        self, restriction: Restriction | None, *, connected: bool, now: datetime
    ) -> LiftCause | None:
        """Why `restriction` ends at `now` (None: it holds): the session `connected`, or
        the ban is over."""
        if restriction is None:
            return None
        if connected:
            return LiftCause.CONNECTED
        if restriction.until is not None and now >= restriction.until:
            return LiftCause.BAN_ENDED
        return None

    def may_send(self, status: str, restriction: Restriction | None, now: datetime) -> bool:
        """Whether the worker may send the session's next message at `now`."""
        return status == Status.CONNECTED and not self.paused(restriction, now)


# -- deadlines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadlineRule:
    """How the worker treats a deadline of one kind."""

    #: Run only by the worker that holds the session; another leaves it for the holder.
    holder_only: bool
    #: Which claims of a deadline that keeps failing unexpectedly are enough: then it is
    #: given up (logged), so that a broken deadline does not come back for ever.
    max_claims: int = 20


DEADLINE_RULES: dict[DeadlineKind, DeadlineRule] = {
    # The session is deleted: whichever worker claims it logs the device out.
    DeadlineKind.LOGOUT: DeadlineRule(holder_only=False),
    DeadlineKind.RETRY: DeadlineRule(holder_only=True),
    DeadlineKind.QR_EXPIRY: DeadlineRule(holder_only=True),
    DeadlineKind.START_CHECK: DeadlineRule(holder_only=True),
    DeadlineKind.SEND: DeadlineRule(holder_only=True),
}


def deadline_rule(kind: str) -> DeadlineRule | None:
    """The rule for a deadline of `kind`; None for a kind this release does not know."""
    try:
        return DEADLINE_RULES[DeadlineKind(kind)]
    except ValueError:
        return None


def gives_up(rule: DeadlineRule, claims: int) -> bool:
    """Whether a deadline that failed unexpectedly on its claim number `claims` is dropped."""
    return claims >= rule.max_claims


# -- webhook deliveries -----------------------------------------------------------------------

#: Pauses before the 2nd, 3rd… tries of a delivery (seconds): 11 tries over about 24 hours.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
#: The longest ``Retry-After`` a receiver may ask for (a day).
MAX_RETRY_AFTER = 86_400.0


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"  # a 2xx answer
    RETRY = "retry"  # tried again later
    DEAD = "dead"  # no try left (or 410 Gone): dead-lettered


@dataclass(frozen=True)
class DeliveryPolicy:
    """What one attempt of a webhook delivery leads to.

    - 2xx: delivered.
    - 410 Gone: dead, and the endpoint is disabled.
    - anything else (another status, a redirect, which is not followed, a time-out, a refused
      connection): tried again after `RETRY_DELAYS` with ±20 % jitter (times `retry_scale`),
      at least what ``Retry-After`` asks (at most a day); dead after the last one.
    - an endpoint failing without a single success for `disable_after` is disabled.
    """

    retry_scale: float = 1.0
    disable_after: timedelta = timedelta(days=3)

    def outcome(
        self,
        status: int | None,
        attempts: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> tuple[DeliveryOutcome, float | None]:
        """The outcome of try number `attempts` (1 for the first) that got `status` (None: no
        answer), and the seconds before the next try when there is one."""
        if status is not None and 200 <= status < 300:
            return DeliveryOutcome.DELIVERED, None
        if status == 410 or attempts > len(RETRY_DELAYS):
            return DeliveryOutcome.DEAD, None
        jitter = (rng or random).uniform(0.8, 1.2)
        delay = RETRY_DELAYS[attempts - 1] * self.retry_scale * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return DeliveryOutcome.RETRY, delay

    def disabling(
        self, status: int | None, failing_since: datetime | None, at: datetime
    ) -> str | None:
        """Why the endpoint is disabled after a failed attempt at `at`, or None: it answered
        410 Gone, or it has been failing since `failing_since` for `disable_after`."""
        if status == 410:
            return "the endpoint answered 410 Gone"
        if failing_since is not None and at - failing_since >= self.disable_after:
            days = (at - failing_since).total_seconds() / 86_400
            return f"failing without a success for {days:.1f} days"
        return None


# -- sending pace and quotas --------------------------------------------------------------------

#: The quotas' windows: any 60 minutes, any 24 hours (rolling, not the clock's hours).
HOUR = 3600.0
DAY = 86_400.0
#: Sends are counted by the minute (`SendLog`): a message sent at 12:00:30 counts in the hour
#: quota until 13:01:00, never less than an hour (a quota is never exceeded, whichever 60
#: minutes are looked at).
SEND_BUCKET = 60
#: Bounds of the settings (checked by `SendingSettings.check`).
MAX_SEND_PAUSE = 3600.0
MAX_PER_HOUR = 1_000_000
MAX_PER_DAY = 24_000_000
#: The "typing…" shown before a message: a second, plus a second per `TYPING_CHARS`
#: characters of its text, at most `TYPING_MAX` seconds.
TYPING_CHARS = 25
TYPING_MAX = 8.0
#: The fields a session may set for itself; the others follow the deployment's defaults.
SENDING_FIELDS = ("interval", "jitter", "per_hour", "per_day", "typing")


@dataclass(frozen=True)
class SendingSettings:
    """How one session sends: at least `interval` seconds between two messages plus a random
    `jitter` (0 to `jitter` seconds more, drawn for each gap), at most `per_hour` messages in
    any 60 minutes and `per_day` in any 24 hours (None: no quota), and "typing…" shown to the
    recipient before each message when `typing`."""

    interval: float = 1.0
    jitter: float = 0.0
    per_hour: int | None = None
    per_day: int | None = None
    typing: bool = False

    def check(self) -> SendingSettings:
        """These settings, or `ValueError` naming what is out of bounds."""
        for name, value in (("interval", self.interval), ("jitter", self.jitter)):
            if not 0.0 <= value <= MAX_SEND_PAUSE:
                raise ValueError(f"{name} must be between 0 and {MAX_SEND_PAUSE:g} seconds")
        for name, quota, most in (
            ("per_hour", self.per_hour, MAX_PER_HOUR),
            ("per_day", self.per_day, MAX_PER_DAY),
        ):
            if quota is not None and not 1 <= quota <= most:
                raise ValueError(f"{name} must be between 1 and {most} (or none)")
        return self

    def overridden(self, overrides: dict[str, Any]) -> SendingSettings:
        """These settings (the deployment's defaults) with a session's own `overrides`."""
        known = {k: v for k, v in overrides.items() if k in SENDING_FIELDS}
        return replace(self, **known)


@dataclass
class SendLog:
    """How many messages a session sent in each minute of the last day (``[minute, count]``,
    oldest first; a minute is ``epoch seconds // 60``) and when it sent the last one (epoch
    seconds). Built from the recorded ``MessageSent`` events only."""

    minutes: list[list[int]] = field(default_factory=list)
    last: float | None = None

    def add(self, at: float) -> None:
        """One message sent at `at`; minutes that no window counts any more are dropped."""
        minute = int(at // SEND_BUCKET)
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1][1] += 1
        else:
            self.minutes.append([minute, 1])
        self.last = at if self.last is None else max(self.last, at)
        while self.minutes and _expiry(self.minutes[0][0], DAY) <= at:
            self.minutes.pop(0)


def _expiry(minute: int, window: float) -> float:
    """When a send counted in `minute` stops counting in a window of `window` seconds."""
    return (minute + 1) * SEND_BUCKET + window


@dataclass
class _Window:
    """One quota's window while a schedule is worked out: sends still counted, by expiry."""

    quota: int
    length: float
    counted: deque[list[float]]  # [expiry, count], oldest first
    total: int = 0

    def forget_until(self, at: float) -> None:
        while self.counted and self.counted[0][0] <= at:
            self.total -= int(self.counted.popleft()[1])

    def opens_at(self) -> float | None:
        """When this window has room for one more (None: it has now)."""
        over = self.total - self.quota + 1
        if over <= 0:
            return None
        for expiry, count in self.counted:
            over -= int(count)
            if over <= 0:
                return expiry
        raise AssertionError("a full window counts its sends")  # pragma: no cover

    def add(self, at: float) -> None:
        expiry = _expiry(int(at // SEND_BUCKET), self.length)
        if self.counted and self.counted[-1][0] == expiry:
            self.counted[-1][1] += 1
        else:
            self.counted.append([expiry, 1])
        self.total += 1


@dataclass(frozen=True)
class QuotaState:
    """A session's quotas at an instant: messages counted in the hour's and the day's
    windows, what is left (None: no quota), and when the next message may go as far as the
    quotas are concerned (None: now)."""

    sent_hour: int
    sent_day: int
    remaining_hour: int | None
    remaining_day: int | None
    opens_at: datetime | None


@dataclass(frozen=True)
class PacePolicy:
    """When a session's next message may go: the pace (at least `interval`, plus a jitter
    drawn for each gap, after the last message sent) and the quotas (rolling windows of an
    hour and a day, counted from the recorded sends: the count survives restarts and
    takeovers). Pure: the clock and the random draws are passed in."""

    def gap(self, settings: SendingSettings, rng: random.Random | None = None) -> float:
        """Seconds between two messages: `interval` plus 0 to `jitter`."""
        if settings.jitter <= 0:
            return settings.interval
        return settings.interval + (rng or random).uniform(0.0, settings.jitter)

    def schedule(
        self, settings: SendingSettings, log: SendLog, now: datetime, count: int
    ) -> list[datetime]:
        """The earliest instants at which the quotas let the next `count` messages of the
        queue go, in order, each sent as soon as it may (the pace not counted): a message
        waits while either window holds its quota."""
        at = now.timestamp()
        windows = [
            _Window(quota, length, deque())
            for quota, length in ((settings.per_hour, HOUR), (settings.per_day, DAY))
            if quota is not None
        ]
        if not windows:
            return [now] * count
        for window in windows:
            for minute, sent in log.minutes:
                expiry = _expiry(minute, window.length)
                if expiry > at:
                    window.counted.append([expiry, sent])
                    window.total += sent
        if all(window.total + count <= window.quota for window in windows):
            return [now] * count  # room for all of them now
        times: list[datetime] = []
        for _ in range(count):
            while True:
                for window in windows:
                    window.forget_until(at)
                opens = [o for o in (w.opens_at() for w in windows) if o is not None]
                if not opens:
                    break
                at = max(opens)
            times.append(now if at == now.timestamp() else _instant(at, now))
            for window in windows:
                window.add(at)
        return times

    def quota(self, settings: SendingSettings, log: SendLog, now: datetime) -> QuotaState:
        """The session's quotas at `now`."""
        at = now.timestamp()
        hour = sum(c for m, c in log.minutes if _expiry(m, HOUR) > at)
        day = sum(c for m, c in log.minutes if _expiry(m, DAY) > at)
        (opens,) = self.schedule(settings, log, now, 1)
        return QuotaState(
            sent_hour=hour,
            sent_day=day,
            remaining_hour=None if settings.per_hour is None else max(0, settings.per_hour - hour),
            remaining_day=None if settings.per_day is None else max(0, settings.per_day - day),
            opens_at=None if opens <= now else opens,
        )

    def next_send_at(
        self, settings: SendingSettings, log: SendLog, now: datetime, gap: float
    ) -> datetime:
        """When the next message may go: `gap` seconds (see `gap`) after the last message
        sent, and not before the quotas allow; `now` when both allow it already."""
        (allowed,) = self.schedule(settings, log, now, 1)
        if log.last is not None:
            paced = _instant(log.last + gap, now)
            allowed = max(allowed, paced)
        return max(allowed, now)

    def typing_seconds(self, text: str) -> float:
        """How long "typing…" is shown before a text: grows with its length, capped."""
        return min(TYPING_MAX, 1.0 + len(text) / TYPING_CHARS)


def _instant(seconds: float, like: datetime) -> datetime:
    """Epoch `seconds` as a datetime in the time zone of `like`."""
    return datetime.fromtimestamp(seconds, like.tzinfo)
