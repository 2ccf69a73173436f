"""What alert rules decide, as pure functions: what each condition observes in the facts the
views hold (`observe`), and which alerts fire and which resolve (`decide`).

An alert fires when its condition holds for a subject with no alert open for it, and
resolves when the condition no longer holds (or its subject is gone). An open alert is never
fired again while it stays open, whatever the evaluations in between: no flapping, and no
duplicate for a subject that stays in trouble.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SessionFacts:
    """What the status view says of one session (not deleted)."""

    session_id: str
    status: str  # connecting | connected | disconnected | expired
    running: bool  # meant to run (not stopped by an operator)
    linked: bool  # linked to a phone at least once
    down_since: datetime | None  # when it last stopped being connected (None: connected)
    restriction_kind: str | None
    silent: bool
    queue_depth: int


@dataclass(frozen=True)
class EndpointFacts:
    """A webhook endpoint and how its deliveries go."""

    webhook_id: str
    session_id: str | None
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int


@dataclass(frozen=True)
class RuleSpec:
    """What a rule watches (a plain copy of the aggregate's fields)."""

    condition: str
    threshold: float | None
    window: int | None = None  # minutes, for messages_failing
    kind: str | None = None  # for restricted
    session_id: str | None = None  # None: every session


@dataclass(frozen=True)
class Observation:
    """What a rule saw of one subject: the value observed and whether it breaches."""

    subject: str
    session_id: str | None
    value: float
    breaching: bool
    detail: str = ""


@dataclass(frozen=True)
class Facts:
    """Everything a rule may look at. The counts that cost a query are asked for only for
    the sessions a rule watches (`failed_since`, `quota_left`)."""

    sessions: Sequence[SessionFacts]
    endpoints: Sequence[EndpointFacts] = ()
    #: (session id, since) -> messages of that session that failed since then
    failed_since: Callable[[str, datetime], int] = lambda _s, _t: 0
    #: session id -> the lower of the hour's and the day's quota left, in % (None: no quota)
    quota_left: Callable[[str], float | None] = lambda _s: None


@dataclass(frozen=True)
class Decisions:
    fire: list[Observation] = field(default_factory=list)
    #: (subject, the value now or None when the subject is gone, cause)
    resolve: list[tuple[str, float | None, str]] = field(default_factory=list)


def decide(open_subjects: Collection[str], observations: Sequence[Observation]) -> Decisions:
    """Fire where the condition holds and no alert is open; resolve the open alerts whose
    condition no longer holds (``cleared``) or whose subject was not observed (``gone``)."""
    decisions = Decisions()
    seen: set[str] = set()
    for seen_now in observations:
        seen.add(seen_now.subject)
        if seen_now.breaching and seen_now.subject not in open_subjects:
            decisions.fire.append(seen_now)
        elif not seen_now.breaching and seen_now.subject in open_subjects:
            decisions.resolve.append((seen_now.subject, seen_now.value, "cleared"))
    decisions.resolve.extend(
        (subject, None, "gone") for subject in sorted(open_subjects) if subject not in seen
    )
    return decisions


def observe(rule: RuleSpec, facts: Facts, now: datetime) -> list[Observation]:
    """What `rule` observes at `now`: one observation per session it watches (per endpoint
    for webhook_failing)."""
    if rule.condition == "webhook_failing":
        return [_endpoint(rule, e) for e in facts.endpoints if _watches(rule, e.session_id)]
    return [_session(rule, s, facts, now) for s in facts.sessions if _watches(rule, s.session_id)]


def _watches(rule: RuleSpec, session_id: str | None) -> bool:
    return rule.session_id is None or rule.session_id == session_id


def _endpoint(rule: RuleSpec, e: EndpointFacts) -> Observation:
    threshold = rule.threshold or 1
    if not e.enabled:
        detail = f"disabled: {e.disabled_reason}" if e.disabled_reason else "disabled"
        return Observation(e.webhook_id, e.session_id, e.consecutive_failures, True, detail)
    failing = e.consecutive_failures >= threshold
    detail = f"{e.consecutive_failures} failed attempts in a row" if failing else ""
    return Observation(e.webhook_id, e.session_id, e.consecutive_failures, failing, detail)


def _session(rule: RuleSpec, s: SessionFacts, facts: Facts, now: datetime) -> Observation:  # noqa: PLR0911
    def seen(value: float, breaching: bool, detail: str = "") -> Observation:
        return Observation(
            s.session_id, s.session_id, value, breaching, detail if breaching else ""
        )

    match rule.condition:
        case "disconnected":
            if not (s.running and s.linked) or s.status == "connected" or s.down_since is None:
                return seen(0, False)
            minutes = max(0.0, (now - s.down_since).total_seconds() / 60)
            limit = rule.threshold or 0
            return seen(round(minutes, 2), minutes >= limit, f"not connected for {minutes:.1f} min")
        case "qr_expired":
            return seen(
                1 if s.status == "expired" else 0, s.status == "expired", "QR codes expired"
            )
        case "restricted":
            kind = s.restriction_kind
            hit = kind is not None and rule.kind in (None, kind)
            return seen(1 if hit else 0, hit, f"restricted: {kind}")
        case "silent":
            return seen(1 if s.silent else 0, s.silent, "health degraded: silent")
        case "queue_depth":
            depth = s.queue_depth
            return seen(depth, depth > (rule.threshold or 0), f"{depth} messages queued")
        case "messages_failing":
            since = now - timedelta(minutes=rule.window or 60)
            failed = facts.failed_since(s.session_id, since)
            hit = failed >= (rule.threshold or 1)
            return seen(failed, hit, f"{failed} messages failed in {rule.window} min")
        case "quota_low":
            left = facts.quota_left(s.session_id)
            if left is None:
                return seen(100, False)
            hit = left < (rule.threshold or 0)
            return seen(round(left, 2), hit, f"{left:.1f} % of the message quota left")
    return seen(0, False)


def quota_percent(
    per_hour: int | None, left_hour: int | None, per_day: int | None, left_day: int | None
) -> float | None:
    """The lower of the hour's and the day's quota left, in % (None: the session has no
    quota)."""
    shares = [
        100.0 * left / limit
        for limit, left in ((per_hour, left_hour), (per_day, left_day))
        if limit and left is not None
    ]
    return min(shares) if shares else None
