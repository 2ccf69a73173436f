"""Alert rules: a condition watched over every session (a deployment's rule, the admin's) or
over one session (that session's rule), and the alerts it has open.

Each rule is an aggregate of its own; every firing and every resolving is one of its events
(`AlertRule.Fired`, `AlertRule.Resolved`), so the log says when each alert fired and
cleared, and two evaluators that decide the same firing cannot both record it: the second
save conflicts on the rule's version. The `AlertBook` (one per deployment) records which
rules exist, so that they can be listed without reading the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, get_args
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import CapReached, DomainError, InvalidValue
from domain.policy import RESTRICTING_REASONS

#: What a rule watches.
Condition = Literal[
    "disconnected",  # not connected for longer than `threshold` minutes (linked, running)
    "qr_expired",  # the QR codes ran out (status expired)
    "restricted",  # restricted by WhatsApp (any kind, or `kind`)
    "silent",  # health degraded with reason silent (the watchdog)
    "queue_depth",  # more than `threshold` outbound messages waiting
    "messages_failing",  # at least `threshold` messages failed within `window` minutes
    "webhook_failing",  # an endpoint failed `threshold` times in a row, or is disabled
    "quota_low",  # the hour's or day's message quota has less than `threshold` % left
]
CONDITIONS: tuple[str, ...] = get_args(Condition)
#: Conditions that need a threshold, and its bounds.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "disconnected": (0, 525_600),  # minutes (a year)
    "queue_depth": (0, 1_000_000),
    "messages_failing": (1, 1_000_000),
    "webhook_failing": (1, 1_000_000),
    "quota_low": (0, 100),  # percent
}
WINDOW_BOUNDS = (1, 10_080)  # minutes (a week)
DEFAULT_WINDOW = 60
ALERT_RULE_PREFIX = "alr_"
MAX_NAME = 200
#: The rules a deployment may hold (each is evaluated every tick).
MAX_RULES = 1000
#: The one book of a deployment's rules.
BOOK_ID = uuid5(UUID("6f1c2a56-3f0e-4c55-9a55-0f6f2d3b7a10"), "sessiond:alert-book")


@dataclass(frozen=True)
class RuleSettings:
    """An alert rule's settings, which a change may set (its condition and session are
    fixed when it is created)."""

    name: str
    threshold: float | None
    window: int | None  # minutes, for messages_failing
    kind: str | None  # for restricted
    enabled: bool = True


def public_rule_id(uuid: UUID) -> str:
    return ALERT_RULE_PREFIX + uuid.hex


def check_rule(
    condition: str, threshold: float | None, window: int | None, kind: str | None
) -> tuple[float | None, int | None, str | None]:
    """The rule's threshold, window and kind as stored; `InvalidValue` naming the field that
    is wrong (``condition``, ``threshold``, ``windowMinutes`` or ``kind``)."""
    if condition not in CONDITIONS:
        raise InvalidValue(
            f"condition: unknown condition {condition!r}; known: {', '.join(CONDITIONS)}"
        )
    bounds = THRESHOLDS.get(condition)
    if bounds is None:
        if threshold is not None:
            raise InvalidValue(f"threshold: the condition {condition} takes no threshold")
    else:
        low, high = bounds
        if threshold is None:
            raise InvalidValue(f"threshold: the condition {condition} needs a threshold")
        if not low <= threshold <= high:
            raise InvalidValue(f"threshold: must be between {low:g} and {high:g}")
    if condition == "messages_failing":
        window = DEFAULT_WINDOW if window is None else window
        if not WINDOW_BOUNDS[0] <= window <= WINDOW_BOUNDS[1]:
            raise InvalidValue(
                f"windowMinutes: must be between {WINDOW_BOUNDS[0]} and {WINDOW_BOUNDS[1]}"
            )
    elif window is not None:
        raise InvalidValue(f"windowMinutes: only messages_failing takes a window, not {condition}")
    if kind is not None:
        if condition != "restricted":
            raise InvalidValue(f"kind: only restricted takes a kind, not {condition}")
        if kind not in RESTRICTING_REASONS:
            known = ", ".join(sorted(RESTRICTING_REASONS))
            raise InvalidValue(f"kind: unknown restriction {kind!r}; known: {known}")
    return threshold, window, kind


def check_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME:
        raise InvalidValue(f"name: 1 to {MAX_NAME} characters, not only spaces")
    return name


class RuleIsDeleted(DomainError):
    """The rule has been deleted."""

    code = "alert-rule-deleted"


class AlertRule(Aggregate):
    """A condition watched, and the alerts it has open (by subject: a session's or a webhook
    endpoint's public id)."""

    TOPIC = "sessiond:AlertRule"

    class Event(Aggregate.Event):
        TOPIC = "sessiond:AlertRule.Event"

    class Created(Event, Aggregate.Created):
        TOPIC = "sessiond:AlertRule.Created"
        name: str
        condition: str
        threshold: float | None
        window: int | None
        kind: str | None
        session_id: str | None
        actor: str

    class Changed(Event):
        TOPIC = "sessiond:AlertRule.Changed"
        name: str
        threshold: float | None
        window: int | None
        kind: str | None
        enabled: bool
        actor: str

    class Deleted(Event):
        TOPIC = "sessiond:AlertRule.Deleted"
        actor: str

    class Fired(Event):
        """The condition holds for `subject` (observed `value`, against `threshold`)."""

        TOPIC = "sessiond:AlertRule.Fired"
        subject: str
        session_id: str | None
        condition: str
        value: float
        threshold: float | None
        detail: str
        at: datetime

    class Resolved(Event):
        """The condition no longer holds for `subject` (or the rule or subject went away)."""

        TOPIC = "sessiond:AlertRule.Resolved"
        subject: str
        session_id: str | None
        condition: str
        value: float | None
        threshold: float | None
        fired_at: datetime
        cause: str  # cleared | rule_changed | rule_deleted | gone

    @event(Created)
    def __init__(  # noqa: PLR0917 - the event's fields
        self,
        id: UUID,
        name: str,
        condition: str,
        threshold: float | None,
        window: int | None,
        kind: str | None,
        session_id: str | None,
        actor: str,
    ) -> None:
        self.condition = condition
        self.session_id = session_id
        self.settings = RuleSettings(name, threshold, window, kind)
        self.deleted = False
        #: subject -> (session id, fired at, observed value)
        self.open: dict[str, tuple[str | None, datetime, float]] = {}

    def check_not_deleted(self) -> None:
        if self.deleted:
            raise RuleIsDeleted("the alert rule has been deleted")

    def change(self, settings: RuleSettings, actor: str) -> bool:
        """Change it to `settings`; unless only its name changes, its open alerts resolve
        (`rule_changed`: the next evaluation fires again what still holds). False when
        nothing changes."""
        self.check_not_deleted()
        threshold, window, kind = check_rule(
            self.condition, settings.threshold, settings.window, settings.kind
        )
        check_name(settings.name)
        new = replace(settings, threshold=threshold, window=window, kind=kind)
        same = self.settings
        if new == same:
            return False
        if replace(new, name=same.name) != same:
            self.resolve_all("rule_changed")
        self._change(new.name, new.threshold, new.window, new.kind, new.enabled, actor)
        return True

    @event(Changed)
    def _change(  # noqa: PLR0917
        self,
        name: str,
        threshold: float | None,
        window: int | None,
        kind: str | None,
        enabled: bool,
        actor: str,
    ) -> None:
        self.settings = RuleSettings(name, threshold, window, kind, enabled)

    @property
    def settings(self) -> RuleSettings:
        return RuleSettings(self.name, self.threshold, self.window, self.kind, self.enabled)

    @settings.setter
    def settings(self, value: RuleSettings) -> None:
        self.name, self.threshold, self.window = value.name, value.threshold, value.window
        self.kind, self.enabled = value.kind, value.enabled

    def delete(self, actor: str) -> None:
        self.check_not_deleted()
        self.resolve_all("rule_deleted")
        self._delete(actor)

    @event(Deleted)
    def _delete(self, actor: str) -> None:
        self.deleted = True

    def fire(
        self, subject: str, session_id: str | None, value: float, detail: str, now: datetime
    ) -> bool:
        """Open an alert for `subject`; False (nothing recorded) if one is open already."""
        self.check_not_deleted()
        if subject in self.open or not self.enabled:
            return False
        self._fire(subject, session_id, self.condition, value, self.threshold, detail, now)
        return True

    @event(Fired)
    def _fire(  # noqa: PLR0917
        self,
        subject: str,
        session_id: str | None,
        condition: str,
        value: float,
        threshold: float | None,
        detail: str,
        at: datetime,
    ) -> None:
        self.open[subject] = (session_id, at, value)

    def resolve(self, subject: str, value: float | None, cause: str = "cleared") -> bool:
        """Close the open alert of `subject`; False if none is open."""
        found = self.open.get(subject)
        if found is None:
            return False
        session_id, fired_at, _ = found
        self._resolve(subject, session_id, self.condition, value, self.threshold, fired_at, cause)
        return True

    def resolve_all(self, cause: str) -> None:
        for subject in sorted(self.open):
            self.resolve(subject, None, cause)

    @event(Resolved)
    def _resolve(  # noqa: PLR0917
        self,
        subject: str,
        session_id: str | None,
        condition: str,
        value: float | None,
        threshold: float | None,
        fired_at: datetime,
        cause: str,
    ) -> None:
        self.open.pop(subject, None)


class AlertBook(Aggregate):
    """Which alert rules exist (one book per deployment, `BOOK_ID`)."""

    TOPIC = "sessiond:AlertBook"

    class Event(Aggregate.Event):
        TOPIC = "sessiond:AlertBook.Event"

    class Opened(Event, Aggregate.Created):
        TOPIC = "sessiond:AlertBook.Opened"

    class RuleAdded(Event):
        TOPIC = "sessiond:AlertBook.RuleAdded"
        rule_id: UUID
        session_id: str | None

    class RuleRemoved(Event):
        TOPIC = "sessiond:AlertBook.RuleRemoved"
        rule_id: UUID

    @event(Opened)
    def __init__(self, id: UUID) -> None:
        #: rule id -> the session it watches (None: every session)
        self.rules: dict[UUID, str | None] = {}

    def add(self, rule_id: UUID, session_id: str | None, cap: int = MAX_RULES) -> None:
        if len(self.rules) >= cap:
            raise CapReached(
                "alert-rule-cap-reached", f"a deployment holds at most {cap} alert rules"
            )
        self._add(rule_id, session_id)

    @event(RuleAdded)
    def _add(self, rule_id: UUID, session_id: str | None) -> None:
        self.rules[rule_id] = session_id

    def remove(self, rule_id: UUID) -> None:
        if rule_id in self.rules:
            self._remove(rule_id)

    @event(RuleRemoved)
    def _remove(self, rule_id: UUID) -> None:
        self.rules.pop(rule_id, None)
