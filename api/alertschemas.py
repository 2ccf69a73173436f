"""Request and response bodies of the alert routes (the same camelCase bases as the rest)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from api.schemas import Body, Out, SessionId
from application.alerts import OpenAlert
from domain.alerts import MAX_NAME, WINDOW_BOUNDS, Condition, public_rule_id
from domain.alerts import AlertRule as Rule

RuleName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
Threshold = Annotated[
    float,
    Meta(
        ge=0,
        le=1_000_000,
        description=(
            "disconnected: minutes; queue_depth: messages; messages_failing: failed messages "
            "within windowMinutes; webhook_failing: failed attempts in a row; quota_low: % of "
            "the hour's or day's quota left. The other conditions take none."
        ),
    ),
]
Window = Annotated[int, Meta(ge=WINDOW_BOUNDS[0], le=WINDOW_BOUNDS[1])]
Kind = Annotated[
    str, Meta(max_length=64, description="restricted only: its kind (any if left out)")
]


class AlertRuleIn(Body):
    condition: Condition
    name: RuleName | None = None
    threshold: Threshold | None = None
    window_minutes: Window | None = None
    kind: Kind | None = None
    session_id: SessionId | None = None  # a session key's rule is always its own session's


class AlertRuleChangeIn(Body):
    """The fields to change; null clears a threshold, window or kind."""

    name: RuleName | UnsetType = UNSET
    threshold: Threshold | UnsetType | None = UNSET
    window_minutes: Window | UnsetType | None = UNSET
    kind: Kind | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET


class AlertOut(Out):
    rule_id: str
    rule_name: str
    condition: str
    subject: str  # the session, or the webhook endpoint (webhook_failing)
    session_id: str | None
    value: float  # what was observed when it fired
    threshold: float | None
    fired_at: datetime

    @classmethod
    def of_alert(cls, alert: OpenAlert) -> AlertOut:
        return cls.of(alert)


class AlertListOut(Out):
    items: list[AlertOut]
    count: int


class AlertRuleOut(Out):
    rule_id: str
    name: str
    condition: str
    threshold: float | None
    window_minutes: int | None
    kind: str | None
    session_id: str | None  # null: every session (a deployment's rule)
    enabled: bool
    created_at: datetime
    updated_at: datetime
    open: list[AlertOut]

    @classmethod
    def of_rule(cls, rule: Rule, open_alerts: list[OpenAlert]) -> AlertRuleOut:
        return cls(
            rule_id=public_rule_id(rule.id),
            name=rule.name,
            condition=rule.condition,
            threshold=rule.threshold,
            window_minutes=rule.window,
            kind=rule.kind,
            session_id=rule.session_id,
            enabled=rule.enabled,
            created_at=rule.created_on,
            updated_at=rule.modified_on,
            open=[AlertOut.of_alert(a) for a in open_alerts],
        )


class AlertRuleListOut(Out):
    items: list[AlertRuleOut]
    count: int
