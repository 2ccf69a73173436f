"""Alert rules (create, list, read, change, delete) and the open alerts.

The admin manages every rule (a deployment's, watching every session, or any session's); a
session key manages its own session's rules only (another's answer 404, as for webhooks),
and sees the open alerts about its session. Rules are read from their own events, so an
answer always includes what the request changed."""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from msgspec import UNSET

from api.alertschemas import (
    AlertListOut,
    AlertOut,
    AlertRuleChangeIn,
    AlertRuleIn,
    AlertRuleListOut,
    AlertRuleOut,
)
from api.auth import API_KEY_SECURITY, Principal, provide_caller
from api.context import Service
from api.controllers.common import problems, target_session
from api.controllers.history import After, Limit
from api.presenters import event_out
from api.problems import ProblemError
from api.schemas import EventPageOut
from api.writes import call
from application.alerting import RuleSpec
from application.alerts import AlertRuleNotFound, Alerts, open_alerts
from application.sessions import SessionsApplication
from domain.alerts import AlertRule, RuleIsDeleted
from domain.errors import InvalidValue
from projections.history import session_history
from projections.readmodels import ReadModels

RULE = "/alerts/rules/{rule_id:str}"
_FIELDS = {"windowMinutes", "threshold", "kind", "condition", "name"}


def _invalid(error: InvalidValue) -> ProblemError:
    """422 naming the field (the domain's message starts with it)."""
    field, _, _ = str(error).partition(":")
    extra = {"field": field} if field in _FIELDS else {}
    return ProblemError(422, "invalid-alert-rule", str(error), extra=extra)


def _not_found(rule_id: str) -> ProblemError:
    return ProblemError(404, "alert-rule-not-found", f"no alert rule {rule_id}")


def _load(sessions: SessionsApplication, caller: Principal, rule_id: str) -> AlertRule:
    """The rule if the caller may see it; 404 otherwise (another session's included)."""
    try:
        rule = Alerts(sessions).load(rule_id)
    except AlertRuleNotFound:
        raise _not_found(rule_id) from None
    if not (caller.is_admin or rule.session_id == caller.session_id):
        raise _not_found(rule_id)
    return rule


def _out(rule: AlertRule) -> AlertRuleOut:
    return AlertRuleOut.of_rule(rule, open_alerts(rule))


class AlertsController(Controller):
    tags = ["alerts"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {"caller": Provide(provide_caller)}  # noqa: RUF012

    @post(
        "/alerts/rules",
        status_code=201,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="createAlertRule",
    )
    async def create_rule(
        self,
        caller: NamedDependency[Principal],
        data: JSONBody[AlertRuleIn],
        *,
        sessions: Service[SessionsApplication],
        read_models: Service[ReadModels],
    ) -> AlertRuleOut:
        """Watch a condition: over every session (the admin, without `sessionId`) or over one
        session (a session key's rule is always its own session's). Each firing and resolving
        is recorded and sent as `alert.firing` / `alert.resolved` webhooks."""
        session_id = target_session(caller, data.session_id, read_models)
        try:
            watched = RuleSpec(
                data.condition, data.threshold, data.window_minutes, data.kind, session_id
            )
            rule = await call(
                Alerts(sessions).create, data.name or data.condition, watched, caller.actor
            )
        except InvalidValue as error:
            raise _invalid(error) from None
        return _out(rule)

    @get("/alerts/rules", responses=problems(400, 401, 429, 503), operation_id="listAlertRules")
    async def list_rules(
        self, caller: NamedDependency[Principal], *, sessions: Service[SessionsApplication]
    ) -> AlertRuleListOut:
        """The rules the caller manages (the admin: all of them), oldest first."""
        rules = await call(Alerts(sessions).rules, None if caller.is_admin else caller.session_id)
        items = [_out(rule) for rule in rules]
        return AlertRuleListOut(items=items, count=len(items))

    @get(RULE, responses=problems(400, 401, 404, 429, 503), operation_id="getAlertRule")
    async def get_rule(
        self,
        caller: NamedDependency[Principal],
        rule_id: FromPath[str],
        *,
        sessions: Service[SessionsApplication],
    ) -> AlertRuleOut:
        """One rule, with its open alerts."""
        return _out(await call(_load, sessions, caller, rule_id))

    @patch(
        RULE,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="updateAlertRule",
    )
    async def change_rule(
        self,
        caller: NamedDependency[Principal],
        rule_id: FromPath[str],
        data: JSONBody[AlertRuleChangeIn],
        *,
        sessions: Service[SessionsApplication],
    ) -> AlertRuleOut:
        """Change its name, threshold, window or kind, or disable it (or enable it again). A
        change of what it watches resolves its open alerts; the next evaluation fires again
        what still holds."""
        await call(_load, sessions, caller, rule_id)
        given: dict[str, Any] = {
            "name": data.name,
            "threshold": data.threshold,
            "window": data.window_minutes,
            "kind": data.kind,
            "enabled": data.enabled,
        }
        clear = frozenset(k for k, v in given.items() if v is None)
        kwargs = {k: v for k, v in given.items() if v is not UNSET and v is not None}

        def change() -> AlertRule:
            return Alerts(sessions).change(rule_id, caller.actor, clear=clear, **kwargs)

        try:
            return _out(await call(change))
        except InvalidValue as error:
            raise _invalid(error) from None
        except (AlertRuleNotFound, RuleIsDeleted):
            raise _not_found(rule_id) from None

    @delete(
        RULE,
        status_code=204,
        responses=problems(400, 401, 404, 409, 429, 503),
        operation_id="deleteAlertRule",
    )
    async def delete_rule(
        self,
        caller: NamedDependency[Principal],
        rule_id: FromPath[str],
        *,
        sessions: Service[SessionsApplication],
    ) -> None:
        """Delete it; its open alerts resolve (`alert.resolved` with cause `rule_deleted`)."""
        await call(_load, sessions, caller, rule_id)
        try:
            await call(Alerts(sessions).delete, rule_id, caller.actor)
        except (AlertRuleNotFound, RuleIsDeleted):
            raise _not_found(rule_id) from None

    @get(
        RULE + "/events",
        responses=problems(400, 401, 404, 429, 503),
        operation_id="listAlertRuleEvents",
    )
    async def rule_events(
        self,
        caller: NamedDependency[Principal],
        rule_id: FromPath[str],
        *,
        sessions: Service[SessionsApplication],
        after: After = 0,
        limit: Limit = 100,
    ) -> EventPageOut:
        """The rule's history, oldest first, paged by version (`after`, `next`): its creation,
        its changes, and every firing (`AlertFired`) and resolving (`AlertResolved`) with the
        session, the value observed and the threshold."""
        rule = await call(_load, sessions, caller, rule_id)
        entries = await call(session_history, sessions, rule.id, after, limit)
        last = entries[-1].version if entries and len(entries) == limit else None
        return EventPageOut(items=[event_out(e) for e in entries], next=last)

    @get("/alerts", responses=problems(400, 401, 429, 503), operation_id="listAlerts")
    async def list_alerts(
        self, caller: NamedDependency[Principal], *, sessions: Service[SessionsApplication]
    ) -> AlertListOut:
        """The open alerts, oldest first: every one for the admin; those about its session for
        a session key."""
        alerts = await call(Alerts(sessions).open, None if caller.is_admin else caller.session_id)
        items = [AlertOut.of_alert(a) for a in alerts]
        return AlertListOut(items=items, count=len(items))
