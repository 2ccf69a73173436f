"""Commands on alert rules (create, change, delete, read) and the evaluation that fires and
resolves their alerts.

Rules are aggregates of the sessions application (one log, one order), listed by the
deployment's `AlertBook`. Any number of processes may evaluate at once: each firing or
resolving is saved at the rule's next version, so of two evaluators that decide the same
thing from the same version only the first save is recorded; the other's conflicts and is
dropped (the next evaluation starts from what was recorded).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.alerting import Facts, RuleSpec, decide, observe
from application.errors import ApplicationError, ConcurrentChange
from application.sessions import SessionsApplication
from domain.alerts import (
    ALERT_RULE_PREFIX,
    BOOK_ID,
    AlertBook,
    AlertRule,
    RuleSettings,
    check_name,
    check_rule,
    public_rule_id,
)
from domain.values import prefixed_uuid

log = logging.getLogger(__name__)
_TRIES = 5


class AlertRuleNotFound(ApplicationError):
    code = "alert-rule-not-found"


@dataclass(frozen=True)
class OpenAlert:
    rule_id: str
    rule_name: str
    condition: str
    subject: str
    session_id: str | None
    value: float
    threshold: float | None
    fired_at: datetime


def rule_uuid(public_id: str) -> UUID:
    uuid = prefixed_uuid(public_id, ALERT_RULE_PREFIX)
    if uuid is None:
        raise AlertRuleNotFound(f"no alert rule {public_id}")
    return uuid


def spec(rule: AlertRule) -> RuleSpec:
    return RuleSpec(rule.condition, rule.threshold, rule.window, rule.kind, rule.session_id)


def open_alerts(rule: AlertRule) -> list[OpenAlert]:
    return [
        OpenAlert(
            public_rule_id(rule.id),
            rule.name,
            rule.condition,
            subject,
            session_id,
            value,
            rule.threshold,
            fired_at,
        )
        for subject, (session_id, fired_at, value) in sorted(rule.open.items())
    ]


class Alerts:
    """Alert rules and their open alerts."""

    def __init__(self, app: SessionsApplication) -> None:
        self.app = app

    def _get(self, uuid: UUID) -> Any:
        try:
            return self.app.repository.get(uuid)
        except AggregateNotFoundError:
            return None

    def load(self, rule_id: str | UUID) -> AlertRule:
        """The rule (not deleted); `AlertRuleNotFound` otherwise."""
        uuid = rule_id if isinstance(rule_id, UUID) else rule_uuid(rule_id)
        rule = self._get(uuid)
        if not isinstance(rule, AlertRule) or rule.deleted:
            raise AlertRuleNotFound(f"no alert rule {rule_id}")
        return rule

    def _book(self) -> AlertBook:
        book = self._get(BOOK_ID)
        return book if isinstance(book, AlertBook) else AlertBook(id=BOOK_ID)

    def rules(self, session_id: str | None = None) -> list[AlertRule]:
        """Every rule (None), or the rules of one session, oldest first."""
        book = self._get(BOOK_ID)
        if not isinstance(book, AlertBook):
            return []
        ids = [r for r, s in book.rules.items() if session_id is None or s == session_id]
        found = [self._get(r) for r in ids]
        rules = [r for r in found if isinstance(r, AlertRule) and not r.deleted]
        return sorted(rules, key=lambda r: r.created_on)

    def open(self, session_id: str | None = None) -> list[OpenAlert]:
        """Open alerts: every one (None), or those of a session (its rules' and the
        deployment rules' alerts about it)."""
        alerts = [alert for rule in self.rules() for alert in open_alerts(rule)]
        if session_id is not None:
            alerts = [a for a in alerts if a.session_id == session_id]
        return sorted(alerts, key=lambda a: a.fired_at)

    def create(self, name: str, watched: RuleSpec, actor: str) -> AlertRule:
        """Record a new rule named `name` that watches `watched` (`InvalidValue` naming the
        field that is wrong)."""
        check_name(name)
        threshold, window, kind = check_rule(
            watched.condition, watched.threshold, watched.window, watched.kind
        )
        rule = AlertRule(
            id=uuid4(),
            name=name,
            condition=watched.condition,
            threshold=threshold,
            window=window,
            kind=kind,
            session_id=watched.session_id,
            actor=actor,
        )
        for _ in range(_TRIES):
            book = self._book()
            book.add(rule.id, watched.session_id)
            try:
                self.app.save(rule, book)
            except IntegrityError:  # another rule was added meanwhile: add to the new book
                continue
            return rule
        raise ConcurrentChange("the alert rules changed concurrently; try again")

    def change(
        self,
        rule_id: str,
        actor: str,
        *,
        name: str | None = None,
        threshold: float | None = None,
        window: int | None = None,
        kind: str | None = None,
        enabled: bool | None = None,
        clear: frozenset[str] = frozenset(),
    ) -> AlertRule:
        """Change the fields given (those in `clear` become null); retried on a conflict
        with an evaluation."""
        for _ in range(_TRIES):
            rule = self.load(rule_id)
            settings = RuleSettings(
                name if name is not None else rule.name,
                None
                if "threshold" in clear
                else threshold
                if threshold is not None
                else rule.threshold,
                None if "window" in clear else window if window is not None else rule.window,
                None if "kind" in clear else kind if kind is not None else rule.kind,
                enabled if enabled is not None else rule.enabled,
            )
            rule.change(settings, actor)
            if not rule.pending_events:
                return rule
            try:
                self.app.save(rule)
            except IntegrityError:
                continue
            return rule
        raise ConcurrentChange(f"alert rule {rule_id} changed concurrently; try again")

    def delete(self, rule_id: str, actor: str) -> None:
        """Delete it; its open alerts resolve (``rule_deleted``)."""
        for _ in range(_TRIES):
            rule = self.load(rule_id)
            rule.delete(actor)
            book = self._book()
            book.remove(rule.id)
            try:
                self.app.save(rule, book)
            except IntegrityError:
                continue
            return
        raise ConcurrentChange(f"alert rule {rule_id} changed concurrently; try again")


class AlertSources(ABC):
    """What the evaluation reads from the views."""

    @abstractmethod
    def facts(self, now: datetime) -> Facts:
        """The sessions and webhook endpoints as the views hold them now."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlertEvaluator:
    """Evaluates every enabled rule and records what fires and what resolves."""

    def __init__(
        self,
        app: SessionsApplication,
        sources: AlertSources,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.alerts = Alerts(app)
        self.app = app
        self.sources = sources
        self.clock = clock

    def tick(self) -> int:
        """One evaluation of every rule; how many firings and resolvings were recorded."""
        rules = self.alerts.rules()
        if not rules:
            return 0
        now = self.clock()
        facts = self.sources.facts(now)
        return sum(self.evaluate(rule, facts, now) for rule in rules)

    def evaluate(self, rule: AlertRule, facts: Facts, now: datetime) -> int:
        """Record what `rule` (as loaded) decides; 0 when another evaluator recorded a change
        of it first (its decision was made from an outdated version)."""
        if not rule.enabled:
            return 0
        decisions = decide(rule.open.keys(), observe(spec(rule), facts, now))
        for seen in decisions.fire:
            rule.fire(seen.subject, seen.session_id, seen.value, seen.detail, now)
        for subject, value, cause in decisions.resolve:
            rule.resolve(subject, value, cause)
        pending = list(rule.pending_events)
        if not pending:
            return 0
        try:
            self.app.save(rule)
        except IntegrityError:
            log.info("alert rule %s was evaluated elsewhere first", public_rule_id(rule.id))
            return 0
        for happened in pending:
            log.info(
                "alert %s: rule %s (%s) for %s",
                "fired" if isinstance(happened, AlertRule.Fired) else "resolved",
                public_rule_id(rule.id),
                rule.condition,
                getattr(happened, "subject", "?"),
            )
        return len(pending)
